use std::sync::Arc;

use copilot_domain::route::RouterDefaults;
use copilot_store::StoreSet;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;

/// What the handlers need besides the stores.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub router: RouterDefaults,
    pub max_message_bytes: usize,
    pub require_membership: bool,
}

#[derive(Clone)]
pub struct AppState {
    pub stores: StoreSet,
    pub auth: Arc<Authenticator>,
    pub service: Arc<ServiceSettings>,
    pub metrics: Option<PrometheusHandle>,
}
