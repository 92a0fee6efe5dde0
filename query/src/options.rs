//! Session settings under the `annals.` prefix (`SET annals.as_of_epoch = 42`).

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
    /// Settings of a query session.
    pub struct AnnalsOptions {
        /// Run every query as of this checkpoint epoch: rows committed after it are invisible.
        /// Unset (the default): everything acknowledged, including rows not yet sealed.
        pub as_of_epoch: Option<u64>, default = None
        /// Group by several tag columns through one integer per tuple of tag values (see
        /// `annals_query::tagkey`); the answers are the same either way.
        pub tag_group_keys: bool, default = true
        /// Without `tag_group_keys`: group by tag columns through string views instead of row-format keys (see
        /// `annals_query::groupkeys`); the answers are the same either way.
        pub view_group_keys: bool, default = true
        /// Answer "newest row per tag" (`row_number() ... = 1` filtered by tags only) from the
        /// last-value cache instead of a scan (see `annals_query::from_cache`); same answers.
        pub newest_from_last_values: bool, default = true
        /// Evaluate filters on data columns inside the scan: the filter's columns are decoded
        /// first, the other columns only for the rows that pass (see `annals_query::scan`);
        /// same answers.
        pub scan_filters: bool, default = true
    }
}

impl ConfigExtension for AnnalsOptions {
    const PREFIX: &'static str = "annals";
}
