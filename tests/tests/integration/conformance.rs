//! The store conformance suite (`integration_tests::conformance`), run against each engine.

mod sqlite {
    use integration_tests::conformance::{self, Sqlite};

    #[test]
    fn store_invariants_hold_after_every_step() {
        conformance::store_invariants_hold_after_every_step(&Sqlite);
    }

    #[test]
    fn claims_are_exactly_once_under_contention() {
        conformance::claims_are_exactly_once_under_contention(&Sqlite);
    }

    #[test]
    fn four_workers_drain_500_tasks_each_exactly_once() {
        conformance::four_workers_drain_500_tasks_each_exactly_once(&Sqlite);
    }

    #[test]
    fn chaos_sigkilled_workers_lose_no_task_and_every_run_is_on_record() {
        conformance::chaos_sigkilled_workers_lose_no_task_and_every_run_is_on_record(&Sqlite);
    }

    #[test]
    fn dependencies_unblock_cancel_and_revive() {
        conformance::dependencies_unblock_cancel_and_revive(&Sqlite);
    }

    #[test]
    fn dependencies_after_any_run_whatever_the_outcome() {
        conformance::dependencies_after_any_run_whatever_the_outcome(&Sqlite);
    }

    #[test]
    fn cancel_and_retry() {
        conformance::cancel_and_retry(&Sqlite);
    }

    #[test]
    fn finish_and_claim() {
        conformance::finish_and_claim(&Sqlite);
    }

    #[test]
    fn pause_and_resume() {
        conformance::pause_and_resume(&Sqlite);
    }

    #[test]
    fn priority_aging() {
        conformance::priority_aging(&Sqlite);
    }

    #[test]
    fn per_type_limits() {
        conformance::per_type_limits(&Sqlite);
    }

    #[test]
    fn batched_claims_and_outcomes() {
        conformance::batched_claims_and_outcomes(&Sqlite);
    }

    #[test]
    fn lease_expiry_and_fencing() {
        conformance::lease_expiry_and_fencing(&Sqlite);
    }

    #[test]
    fn an_add_is_all_or_nothing() {
        conformance::an_add_is_all_or_nothing(&Sqlite);
    }

    #[test]
    fn listing_and_purge() {
        conformance::listing_and_purge(&Sqlite);
    }

    #[test]
    fn removing_finished_tasks() {
        conformance::removing_finished_tasks(&Sqlite);
    }

    #[test]
    fn editing_a_task_before_it_starts() {
        conformance::editing_a_task_before_it_starts(&Sqlite);
    }

    #[test]
    fn review_and_branch_states() {
        conformance::review_and_branch_states(&Sqlite);
    }

    #[test]
    fn fanned_out_tasks_name_their_siblings() {
        conformance::fanned_out_tasks_name_their_siblings(&Sqlite);
    }
}

mod postgres {
    use integration_tests::conformance::{self, Postgres};

    #[test]
    fn store_invariants_hold_after_every_step() {
        conformance::store_invariants_hold_after_every_step(&Postgres);
    }

    #[test]
    fn claims_are_exactly_once_under_contention() {
        conformance::claims_are_exactly_once_under_contention(&Postgres);
    }

    #[test]
    fn four_workers_drain_500_tasks_each_exactly_once() {
        conformance::four_workers_drain_500_tasks_each_exactly_once(&Postgres);
    }

    #[test]
    fn chaos_sigkilled_workers_lose_no_task_and_every_run_is_on_record() {
        conformance::chaos_sigkilled_workers_lose_no_task_and_every_run_is_on_record(&Postgres);
    }

    #[test]
    fn dependencies_unblock_cancel_and_revive() {
        conformance::dependencies_unblock_cancel_and_revive(&Postgres);
    }

    #[test]
    fn dependencies_after_any_run_whatever_the_outcome() {
        conformance::dependencies_after_any_run_whatever_the_outcome(&Postgres);
    }

    #[test]
    fn cancel_and_retry() {
        conformance::cancel_and_retry(&Postgres);
    }

    #[test]
    fn finish_and_claim() {
        conformance::finish_and_claim(&Postgres);
    }

    #[test]
    fn pause_and_resume() {
        conformance::pause_and_resume(&Postgres);
    }

    #[test]
    fn priority_aging() {
        conformance::priority_aging(&Postgres);
    }

    #[test]
    fn per_type_limits() {
        conformance::per_type_limits(&Postgres);
    }

    #[test]
    fn batched_claims_and_outcomes() {
        conformance::batched_claims_and_outcomes(&Postgres);
    }

    #[test]
    fn lease_expiry_and_fencing() {
        conformance::lease_expiry_and_fencing(&Postgres);
    }

    #[test]
    fn an_add_is_all_or_nothing() {
        conformance::an_add_is_all_or_nothing(&Postgres);
    }

    #[test]
    fn listing_and_purge() {
        conformance::listing_and_purge(&Postgres);
    }

    #[test]
    fn removing_finished_tasks() {
        conformance::removing_finished_tasks(&Postgres);
    }

    #[test]
    fn editing_a_task_before_it_starts() {
        conformance::editing_a_task_before_it_starts(&Postgres);
    }

    #[test]
    fn review_and_branch_states() {
        conformance::review_and_branch_states(&Postgres);
    }

    #[test]
    fn fanned_out_tasks_name_their_siblings() {
        conformance::fanned_out_tasks_name_their_siblings(&Postgres);
    }
}

/// The driver conformance suite (`integration_tests::driver_conformance`): one test per
/// primitive per driver, each on a fresh queue.
macro_rules! driver_suites {
    ($($name:ident),*) => {
        mod sqlite_driver {
            $(#[test]
            fn $name() {
                let queue = integration_tests::TestQueue::new();
                let store = queue::SqliteStore::open(&queue.queue).unwrap();
                integration_tests::driver_conformance::$name(store.driver());
            })*
        }

        mod postgres_driver {
            $(#[test]
            fn $name() {
                let queue = integration_tests::TestQueue::on_postgres();
                let url = queue::PostgresUrl::parse(&queue.address).unwrap();
                let store = queue::PostgresStore::open(&url).unwrap();
                integration_tests::driver_conformance::$name(store.driver());
            })*
        }
    };
}

driver_suites!(
    ids_rows_and_edges_round_trip,
    a_failed_write_applies_nothing,
    a_panicking_write_leaves_the_driver_usable,
    lease_secrets_stay_while_running,
    candidates_come_in_claim_order,
    claim_view_reads_what_the_primitives_read,
    counts_follow_the_rows,
    expired_leases_are_found,
    pauses_settings_and_workers,
    listings_filter_order_and_page,
    first_work_is_found_upstream_and_not_when_paused,
    purging_by_age_respects_states_time_and_limit
);
