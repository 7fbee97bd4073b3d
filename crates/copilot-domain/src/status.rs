//! Which conversations a listing shows; on its own so that list cursors (which carry it) and
//! conversations both use it without depending on each other.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    #[default]
    Active,
    Archived,
    All,
}
