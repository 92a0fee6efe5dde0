//! Session settings under the `annals.` prefix (`SET annals.as_of_epoch = 42`).

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
    /// Settings of a query session.
    pub struct AnnalsOptions {
        /// Run every query as of this checkpoint epoch: rows committed after it are invisible.
        /// Unset (the default): everything acknowledged, including rows not yet sealed.
        pub as_of_epoch: Option<u64>, default = None
    }
}

impl ConfigExtension for AnnalsOptions {
    const PREFIX: &'static str = "annals";
}
