//! A short run of every fuzz target, so CI notices when a parser starts to panic or a
//! target's invariant breaks. `skiff-fuzz` runs the long ones (see FUZZING.md).

#[test]
fn every_target_survives_a_short_run() {
    for target in skiff_fuzz::TARGETS {
        let report = skiff_fuzz::run(target, 2_000, 7);
        assert!(
            report.crashes.is_empty(),
            "{} panicked; inputs saved at {:?}",
            target.name,
            report.crashes
        );
        // The generators must reach past the first check some of the time, or the
        // target exercises nothing.
        assert!(
            report.accepted > 0,
            "{} accepted no input in {} runs",
            target.name,
            report.runs
        );
    }
}
