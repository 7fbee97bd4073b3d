//! The success responses of versioned resources, documented once: the resource as JSON with
//! `ETag: "<version>"` ([`Stored`] after a write, [`Created`] after a create) and, for reads,
//! `304` when `If-None-Match` names the current `ETag` ([`Current`]). Handlers answer them with
//! `extract::with_etag` and `rendered.rs`; these types only describe them.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use copilot_domain::config::StoredPatchView;
use copilot_domain::conversation::Conversation;
use copilot_domain::policy::StoredPolicy;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, ToSchema};

/// A resource with a version, and what its responses call it.
pub trait Versioned: ToSchema {
    const NAME: &'static str;
}

impl Versioned for Conversation {
    const NAME: &'static str = "conversation";
}

impl Versioned for StoredPolicy {
    const NAME: &'static str = "policy";
}

impl Versioned for StoredPatchView {
    const NAME: &'static str = "level's patch";
}

/// `200`: the resource as stored by this write.
pub struct Stored<T>(PhantomData<T>);
/// `201`: the resource this request created.
pub struct Created<T>(PhantomData<T>);
/// `200`: the resource as it is, or `304`.
pub struct Current<T>(PhantomData<T>);

fn tagged<T: Versioned>(description: String) -> RefOr<Response> {
    let etag = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some("\"<version>\""))
        .build();
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(T::name())))
        .build();
    ResponseBuilder::new()
        .description(description)
        .header("ETag", etag)
        .content("application/json", body)
        .build()
        .into()
}

impl<T: Versioned> IntoResponses for Stored<T> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let description = format!("The {} as stored, with its new version", T::NAME);
        BTreeMap::from([("200".to_owned(), tagged::<T>(description))])
    }
}

impl<T: Versioned> IntoResponses for Created<T> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let description = format!("The new {}", T::NAME);
        BTreeMap::from([("201".to_owned(), tagged::<T>(description))])
    }
}

impl<T: Versioned> IntoResponses for Current<T> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let not_modified = ResponseBuilder::new()
            .description("Not modified: `If-None-Match` named the current `ETag`")
            .build();
        BTreeMap::from([
            ("200".to_owned(), tagged::<T>(format!("The {}", T::NAME))),
            ("304".to_owned(), not_modified.into()),
        ])
    }
}
