//! Share links: a run (model, question, strategy and parameters, seed, and its trace) packed
//! into a URL fragment, `#run=<base64url(deflate(JSON))>`, so the page can show the recorded
//! run at once and re-run it. Decoding refuses anything malformed, truncated, oversized or
//! immoderate (a budget no one would run) before it is used, with a message that says which.
//!
//! Links have a format of their own, versioned: version 2 ([`format`]) names the strategy and
//! every spec field as the command line does; version 3 is version 2 with the run's system
//! message (links without one are still made as version 2); version 1 links (the engine's spec
//! and trace as they were until then, [`v1`]) still open.

mod format;
mod v1;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ets_spec::strategy::{SolveSpec, ValidSpec};
use ets_spec::trace::TraceEvent;

/// The fragment's key.
const KEY: &str = "run=";
/// The newest format version: links with a system message are made in it, others in
/// [`VERSION_WITHOUT_SYSTEM`], which every app since that version opens unchanged.
const VERSION: u32 = 3;
/// The version of links without a system message (version 3 added only that field, so an app
/// that cannot carry one refuses such a link instead of re-running it without it).
const VERSION_WITHOUT_SYSTEM: u32 = 2;
/// The longest fragment accepted, in characters (browsers take far longer URLs; this bounds
/// the work a pasted link can cause).
pub const MAX_FRAGMENT: usize = 512 * 1024;
/// The most JSON a link may inflate to, in bytes (refuses decompression bombs).
const MAX_JSON: usize = 8 * 1024 * 1024;
/// Above this many fragment characters, a link is made without its trace.
const TRACE_BUDGET: usize = 256 * 1024;

/// A shared run, as the app shows and re-runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedRun {
    /// The model's id (bundled ones open anywhere).
    pub model: String,
    pub draft: Option<String>,
    pub question: String,
    /// The system message ahead of the question in the model's chat template.
    pub system: Option<String>,
    pub spec: ValidSpec,
    /// The recorded events; empty when the link had to leave them out.
    pub trace: Vec<TraceEvent>,
}

impl SharedRun {
    /// A run to share.
    pub fn new(
        model: String,
        draft: Option<String>,
        question: String,
        system: Option<String>,
        spec: ValidSpec,
        trace: Vec<TraceEvent>,
    ) -> Self {
        Self {
            model,
            draft,
            question,
            system,
            spec,
            trace,
        }
    }

    /// The answer the recorded run gave, if its trace has a finish event.
    pub fn answer(&self) -> Option<&str> {
        self.trace.iter().find_map(|e| match e {
            TraceEvent::Finish(f) => f.answer.as_deref(),
            _ => None,
        })
    }
}

/// Why a link cannot be opened.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ShareError {
    #[error("this link holds no run (its fragment should start with #run=)")]
    NotALink,
    #[error("this link is too long ({0} characters; at most {MAX_FRAGMENT})")]
    TooLong(usize),
    #[error("this link is damaged: {0}")]
    Damaged(String),
    #[error("this link was made by a newer version of ETS (format {0})")]
    NewerVersion(u32),
    #[error("this link asks for a run ETS does not make: {0}")]
    Refused(String),
}

/// The fragment (without `#`) for `run`. Leaves the trace out if the link would be too long.
pub fn encode(run: &SharedRun) -> String {
    let packed = pack(run);
    if packed.len() <= TRACE_BUDGET {
        return packed;
    }
    pack(&SharedRun {
        trace: Vec::new(),
        ..run.clone()
    })
}

fn pack(run: &SharedRun) -> String {
    // Serialising our own types cannot fail: every map key is a string.
    let version = if run.system.is_some() {
        VERSION
    } else {
        VERSION_WITHOUT_SYSTEM
    };
    let json = serde_json::to_vec(&format::Link::of(run, version)).unwrap_or_default();
    let deflated = miniz_oxide::deflate::compress_to_vec(&json, 9);
    format!("{KEY}{}", URL_SAFE_NO_PAD.encode(deflated))
}

/// The fragment of a link as pasted: a whole link (`https://…/#run=…`, `ets://open#run=…`), a
/// fragment (`#run=…`) or the bare `run=…`.
pub fn fragment_of(link: &str) -> &str {
    let link = link.trim();
    link.rsplit_once('#').map_or(link, |(_, fragment)| fragment)
}

/// The run in a fragment (with or without the leading `#`).
pub fn decode(fragment: &str) -> Result<SharedRun, ShareError> {
    let fragment = fragment.strip_prefix('#').unwrap_or(fragment);
    if fragment.len() > MAX_FRAGMENT {
        return Err(ShareError::TooLong(fragment.len()));
    }
    let payload = fragment.strip_prefix(KEY).ok_or(ShareError::NotALink)?;
    let damaged = |why: String| ShareError::Damaged(why);
    let deflated = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| damaged(format!("not base64url ({e})")))?;
    let json = miniz_oxide::inflate::decompress_to_vec_with_limit(&deflated, MAX_JSON).map_err(
        |e| match e.status {
            miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                damaged(format!("it inflates to more than {MAX_JSON} bytes"))
            }
            _ => damaged("the compressed data is cut short or corrupt".into()),
        },
    )?;
    let version = serde_json::from_slice::<serde_json::Value>(&json)
        .map_err(|e| damaged(format!("not JSON ({e})")))?
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| damaged("no format version".into()))?;
    let unexpected = |e: serde_json::Error| damaged(format!("unexpected content ({e})"));
    let run = match version {
        1 => serde_json::from_slice::<v1::Link>(&json)
            .map_err(unexpected)?
            .into_run()?,
        2 | 3 => serde_json::from_slice::<format::Link>(&json)
            .map_err(unexpected)?
            .into_run()?,
        newer if newer > u64::from(VERSION) => {
            return Err(ShareError::NewerVersion(
                u32::try_from(newer).unwrap_or(u32::MAX),
            ));
        }
        other => return Err(damaged(format!("unknown format version {other}"))),
    };
    if run.question.trim().is_empty() {
        return Err(damaged("the question is empty".into()));
    }
    Ok(run)
}

/// `spec` checked, or refused with what is out of range.
fn refuse_invalid(spec: SolveSpec) -> Result<ValidSpec, ShareError> {
    spec.validate()
        .map_err(|e| ShareError::Refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ets_spec::answer::Extraction;
    use ets_spec::diffusion::{DiffusionSchedule, Remasking};
    use ets_spec::reward::RewardKind;
    use ets_spec::sampling::SamplingParams;
    use ets_spec::strategy::{EtsParams, Strategy};
    use ets_spec::trace::FinishTrace;

    fn run(trace_steps: usize) -> SharedRun {
        let spec = SolveSpec {
            strategy: Strategy::Ets(EtsParams::default()),
            sampling: SamplingParams::default(),
            max_tokens: 160,
            diffusion: DiffusionSchedule {
                gen_length: 64,
                block_length: 32,
                steps: 64,
                remasking: Remasking::LowConfidence,
            },
            reward: RewardKind::SelfConsistency,
            extraction: Extraction::Strict,
            seed: 3,
        }
        .validate()
        .unwrap();
        let mut trace: Vec<TraceEvent> = (0..trace_steps)
            .map(|i| TraceEvent::Start {
                strategy: format!("step {i} with some text to make it long {}", i * 7919),
                prompt_tokens: i,
            })
            .collect();
        trace.push(TraceEvent::Finish(FinishTrace {
            text: "14 + 9 = 23. #### 18".into(),
            answer: Some("18".into()),
            tokens: 3000,
            draft_tokens: 0,
            reward_tokens: 0,
            wall_ms: 812.5,
        }));
        SharedRun::new("ref-ar".into(), None, "How many?".into(), None, spec, trace)
    }

    /// The JSON a fragment inflates to.
    fn json_of(fragment: &str) -> serde_json::Value {
        let payload = fragment.strip_prefix(KEY).unwrap();
        let deflated = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let json = miniz_oxide::inflate::decompress_to_vec(&deflated).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn a_system_message_travels_in_a_version_3_link_and_only_then() {
        let plain = encode(&run(1));
        let json = json_of(&plain);
        assert_eq!(
            json["version"], 2,
            "no system message: the version-2 format"
        );
        assert!(json.get("system").is_none());
        let with = SharedRun {
            system: Some("Answer in one word.".into()),
            ..run(1)
        };
        let link = encode(&with);
        assert_eq!(json_of(&link)["version"], 3);
        assert_eq!(decode(&link).unwrap(), with);
    }

    #[test]
    fn a_run_round_trips() {
        let original = run(3);
        let link = encode(&original);
        assert!(link.starts_with("run="));
        assert!(
            link.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=-_".contains(&b))
        );
        let back = decode(&format!("#{link}")).unwrap();
        assert_eq!(back, original);
        assert_eq!(back.answer(), Some("18"));
    }

    #[test]
    fn every_setting_round_trips_through_the_link_format() {
        for (name, _) in ets_spec::strategy::STRATEGIES {
            let mut spec = run(0).spec.into_inner();
            spec.strategy = name.parse::<Strategy>().unwrap().with_budget(5);
            spec.sampling.top_k = Some(7);
            spec.sampling.top_p = Some(0.9);
            spec.reward = RewardKind::Format {
                pattern: "#### \\d+".into(),
            };
            spec.extraction = Extraction::Flexible;
            spec.diffusion.remasking = Remasking::Random;
            let link = format::LinkSpec::of(&spec);
            assert_eq!(link.strategy, name);
            assert_eq!(link.to_spec().unwrap(), spec, "{name}");
        }
        let mut unknown = format::LinkSpec::of(&run(0).spec);
        unknown.strategy = "ets2".into();
        assert!(unknown.to_spec().unwrap_err().contains("unknown strategy"));
    }

    /// Links in the version-1 format, made by the code of that time (commit 64c6cae) and kept
    /// in tests/fixtures/share-links-v1.txt: an ETS run and a majority vote.
    #[test]
    fn version_1_links_still_open() {
        use ets_spec::strategy::draw_probabilities;
        use ets_spec::trace::Selection;
        let fixtures = include_str!("../../../tests/fixtures/share-links-v1.txt");
        let link = |name: &str| {
            fixtures
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        let step = |run: &SharedRun| {
            run.trace
                .iter()
                .find_map(|e| match e {
                    TraceEvent::Step(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let ets = decode(fragment_of(&link("ets "))).unwrap();
        assert_eq!(ets.answer(), Some("18"));
        assert_eq!(
            ets.spec.strategy,
            Strategy::Ets(EtsParams {
                m: 2,
                k: 2,
                block: 4,
                ..EtsParams::default()
            })
        );
        let s = step(&ets);
        // As written (JSON numbers read back to within a unit in the last place).
        let energies = [9.306852819440055, -std::f64::consts::LN_2];
        let Selection::EnergyDraw { probabilities } = &s.selection else {
            panic!("an ETS step draws: {:?}", s.selection);
        };
        for (p, q) in probabilities.iter().zip(draw_probabilities(&energies)) {
            assert!((p - q).abs() < 1e-12, "{probabilities:?}");
        }
        assert!((s.candidates[0].log_energy.unwrap() - energies[0]).abs() < 1e-12);
        assert_eq!(s.candidates[0].rollouts[0].answer.as_deref(), Some("18"));
        // Today's format carries the same run.
        assert_eq!(decode(&encode(&ets)).unwrap(), ets);

        let majority = decode(fragment_of(&link("majority "))).unwrap();
        assert_eq!(majority.spec.strategy, Strategy::Majority { n: 3 });
        let s = step(&majority);
        assert_eq!(
            s.selection,
            Selection::Vote {
                votes: vec![2, 1, 2]
            }
        );
        assert!(s.candidates.iter().all(|c| c.log_energy.is_none()));
        assert_eq!(decode(&encode(&majority)).unwrap(), majority);
    }

    #[test]
    fn a_huge_trace_is_left_out() {
        let big = run(40_000);
        let link = encode(&big);
        assert!(link.len() <= TRACE_BUDGET, "{}", link.len());
        let back = decode(&link).unwrap();
        assert!(back.trace.is_empty());
        assert_eq!(back.question, big.question);
    }

    #[test]
    fn links_open_whatever_app_made_them() {
        let fragment = encode(&run(2));
        for link in [
            format!("http://127.0.0.1:8080/#{fragment}"),
            format!("https://example.org/ets/index.html#{fragment}"),
            format!("ets://open#{fragment}"),
            format!("  #{fragment}\n"),
            fragment.clone(),
        ] {
            assert_eq!(decode(fragment_of(&link)).unwrap(), run(2), "{link}");
        }
        assert_eq!(
            decode(fragment_of("https://example.org/#top")),
            Err(ShareError::NotALink)
        );
    }

    #[test]
    fn bad_links_are_refused_with_a_reason() {
        let good = encode(&run(1));
        type Expect = fn(&ShareError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            ("".into(), |e| *e == ShareError::NotALink),
            ("#other=1".into(), |e| *e == ShareError::NotALink),
            ("run=***".into(), |e| matches!(e, ShareError::Damaged(_))),
            (good[..good.len() / 2].to_string(), |e| {
                matches!(e, ShareError::Damaged(_))
            }),
            (format!("run={}", "A".repeat(MAX_FRAGMENT)), |e| {
                matches!(e, ShareError::TooLong(_))
            }),
            (
                format!(
                    "run={}",
                    URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec(b"[1,2]", 6))
                ),
                |e| matches!(e, ShareError::Damaged(_)),
            ),
        ];
        for (link, expected) in cases {
            let err = decode(&link).unwrap_err();
            assert!(expected(&err), "{link:.40}: {err}");
        }
        // A decompression bomb: 9 MB of spaces compresses to a few kilobytes.
        let bomb = vec![b' '; 9 * 1024 * 1024];
        let link = format!(
            "run={}",
            URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec(&bomb, 9))
        );
        assert!(link.len() < MAX_FRAGMENT);
        assert!(matches!(decode(&link), Err(ShareError::Damaged(m)) if m.contains("inflates")));
        // A newer format is named as such.
        let mut newer = serde_json::to_value(format::Link::of(&run(1), VERSION)).unwrap();
        newer["version"] = 99.into();
        let link = format!(
            "run={}",
            URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec(
                newer.to_string().as_bytes(),
                6
            ))
        );
        assert_eq!(decode(&link), Err(ShareError::NewerVersion(99)));
        // Settings no one would use are refused, each with what it asked for.
        for (path, value) in [
            ("/spec/budget", 1_000_000_i64),
            ("/spec/ets/k", 65),
            ("/spec/max_tokens", 1_i64 << 40),
        ] {
            let mut greedy = serde_json::to_value(format::Link::of(&run(1), VERSION)).unwrap();
            *greedy.pointer_mut(path).unwrap() = value.into();
            let link = format!(
                "run={}",
                URL_SAFE_NO_PAD.encode(miniz_oxide::deflate::compress_to_vec(
                    greedy.to_string().as_bytes(),
                    6
                ))
            );
            let err = decode(&link).unwrap_err();
            assert!(
                matches!(&err, ShareError::Refused(m) if m.contains("at most")),
                "{path}: {err}"
            );
        }
    }

    /// Fuzzing: mutants of valid links (edits of their JSON, re-packed so that they reach the
    /// checks past base64 and deflate, and byte edits of the fragment) each open or are refused
    /// with a `ShareError`, never a panic; a link that opens packs again into one that opens
    /// the same run. `ETS_FUZZ_CASES=N` runs more cases.
    #[test]
    fn mutated_links_open_or_are_refused() {
        let ours = serde_json::to_value(format::Link::of(&run(6), VERSION)).unwrap();
        let fixture = include_str!("../../../tests/fixtures/share-links-v1.txt");
        let mut seeds = vec![ours];
        for line in fixture.lines().filter(|l| !l.starts_with('#')) {
            let payload = fragment_of(line).trim_start_matches(KEY);
            let deflated = URL_SAFE_NO_PAD.decode(payload).unwrap();
            let json = miniz_oxide::inflate::decompress_to_vec(&deflated).unwrap();
            seeds.push(serde_json::from_slice(&json).unwrap());
        }
        assert!(seeds.len() > 1);
        let pack_json = |json: &[u8]| {
            let deflated = miniz_oxide::deflate::compress_to_vec(json, 6);
            format!("{KEY}{}", URL_SAFE_NO_PAD.encode(deflated))
        };
        let report = ets_fuzz::run(
            "share-link",
            ets_fuzz::cases(5000),
            ets_fuzz::seed(6),
            64 << 20,
            |rng| {
                let seed = rng.pick(&seeds).clone();
                if rng.chance(0.8) {
                    pack_json(&ets_fuzz::mutate_json_text(rng, &seed)).into_bytes()
                } else {
                    let link = pack_json(seed.to_string().as_bytes());
                    ets_fuzz::mutate_bytes(rng, link.as_bytes())
                }
            },
            |bytes| {
                let link = String::from_utf8_lossy(bytes);
                match decode(&link) {
                    Ok(opened) => {
                        let again =
                            decode(&encode(&opened)).expect("a link that opened packs again");
                        assert_eq!(
                            (&again.model, &again.question, &again.spec, &again.system),
                            (
                                &opened.model,
                                &opened.question,
                                &opened.spec,
                                &opened.system
                            )
                        );
                        ets_fuzz::Outcome::Accepted
                    }
                    Err(_) => ets_fuzz::Outcome::Refused,
                }
            },
        );
        eprintln!("{report}");
        assert!(report.findings.is_empty(), "{report}");
        assert!(report.accepted > 0 && report.refused > 0, "{report}");
    }
}
