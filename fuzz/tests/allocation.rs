//! With `CappedAlloc` installed, a case that allocates more than the cap at once is a finding.

use ets_fuzz::{CappedAlloc, Outcome, run};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

#[test]
fn an_allocation_above_the_cap_is_a_finding() {
    let report = run(
        "allocation-selftest",
        16,
        3,
        1 << 20,
        |rng| vec![rng.below(2) as u8],
        |input| {
            let size = if input[0] == 0 { 64 } else { 8 << 20 };
            std::hint::black_box(vec![1u8; size]);
            Outcome::Accepted
        },
    );
    assert_eq!(report.cases, 16);
    assert!(!report.findings.is_empty(), "{report}");
    assert!(report.findings.len() < 16, "{report}");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.what.contains("8388608 bytes")),
        "{report}"
    );
    assert!(report.largest_allocation >= 8 << 20, "{report}");
}
