//! The live view of a run: the answer as it streams in (token by token where one sequence is
//! decoded; otherwise the sequences being decoded are listed under the steps), tokens/s and
//! elapsed time, and for each
//! step the candidates with what the choice weighed, as the trace says: for ETS each candidate's
//! log-energy and its chance of being drawn (the bars; only a draw has chances), for Best-of-N
//! each reward, for the majority vote each count; each candidate's rollouts' rewards (what the
//! reward, e.g. the judge, said of each completion); the rollouts' answers as a vote histogram,
//! and the chosen candidate highlighted.

use ets_protocol::MemoryReading;
use ets_protocol::models::format_bytes;
use ets_spec::trace::{CandidateTrace, Selection, StepTrace};
use leptos::prelude::*;

use crate::ui::state::{AppState, RunStatus, RunView};

/// (answer, votes) over a step's rollouts, most votes first; "—" for rollouts without one.
pub fn vote_histogram(step: &StepTrace) -> Vec<(String, usize)> {
    let mut votes: Vec<(String, usize)> = Vec::new();
    for rollout in step.candidates.iter().flat_map(|c| &c.rollouts) {
        let answer = rollout.answer.clone().unwrap_or_else(|| "—".into());
        match votes.iter_mut().find(|(a, _)| *a == answer) {
            Some((_, n)) => *n += 1,
            None => votes.push((answer, 1)),
        }
    }
    votes.sort_by_key(|v| std::cmp::Reverse(v.1));
    votes
}

/// A candidate's rollouts' rewards, as the live view lists them ("" without rollouts).
pub fn rollout_rewards(candidate: &CandidateTrace) -> String {
    candidate
        .rollouts
        .iter()
        .map(|r| format!("{:.2}", r.reward))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One guidance step.
#[component]
fn Step(step: StepTrace) -> impl IntoView {
    let votes = vote_histogram(&step);
    let most = votes.first().map(|(_, n)| *n).unwrap_or(1).max(1);
    // Per candidate: its chance of being drawn (a draw only), its label and the label's title;
    // and the step's rule.
    type Weighed = (Option<f64>, String, &'static str);
    let (weighed, rule): (Vec<Weighed>, &str) = match &step.selection {
        Selection::EnergyDraw { probabilities } => (
            step.candidates
                .iter()
                .zip(probabilities)
                .map(|(c, &p)| {
                    let energy = c.log_energy.map_or("—".into(), |e| format!("{e:.2}"));
                    (
                        Some(p),
                        format!("log Ê {energy} · p {p:.2}"),
                        "log Ê: log mean exp(r/λ) over the rollouts; p: the chance of being drawn",
                    )
                })
                .collect(),
            "one drawn ∝ exp(log Ê)",
        ),
        Selection::RewardArgmax { rewards } => (
            rewards
                .iter()
                .map(|r| {
                    (
                        None,
                        format!("reward {r:.2}"),
                        "the highest reward is kept (no draw)",
                    )
                })
                .collect(),
            "the best reward kept",
        ),
        Selection::Vote { votes } => (
            votes
                .iter()
                .map(|v| {
                    (
                        None,
                        format!("{v} votes"),
                        "the most frequent answer is kept (no draw)",
                    )
                })
                .collect(),
            "the majority answer kept",
        ),
        Selection::Resample {
            probabilities,
            copies,
        } => (
            probabilities
                .iter()
                .zip(copies)
                .map(|(&p, n)| {
                    (
                        Some(p),
                        format!("p {p:.2} · {n} copies"),
                        "p: the chance at each draw, ∝ exp(Δr/λ); copies: how many particles continue it",
                    )
                })
                .collect(),
            "particles resampled ∝ exp(Δr/λ)",
        ),
    };
    let candidates = step
        .candidates
        .iter()
        .zip(weighed)
        .enumerate()
        .map(|(i, (c, (chance, label, title)))| {
            let chosen = i == step.chosen;
            // Line breaks show as ⏎ so each candidate stays on one row.
            let text = if c.text.is_empty() {
                "∅".to_string()
            } else {
                c.text.replace('\n', "⏎")
            };
            let rewards = rollout_rewards(c);
            let rewards = (!rewards.is_empty()).then(|| {
                view! {
                    <span class="rewards" data-testid="rollout-rewards" title="the reward of each rollout">
                        {format!("r {rewards}")}
                    </span>
                }
            });
            view! {
                <li class="candidate" class:chosen=chosen data-testid="candidate">
                    {chance.map(|p| view! { <span class="bar" style:width=format!("{:.1}%", p * 100.0)></span> })}
                    <code class="text">{text}</code>
                    <span class="energy" title=title>{label}</span>
                    {rewards}
                    {c.recycled.then(|| view! { <span class="tag">"recycled"</span> })}
                </li>
            }
        })
        .collect_view();
    let histogram = (!votes.is_empty()).then(|| {
        view! {
            <div class="votes" data-testid="votes">
                <span class="label">"rollout answers"</span>
                {votes
                    .into_iter()
                    .map(|(answer, n)| {
                        view! {
                            <span class="vote" title=format!("{n} rollouts")>
                                <span class="vote-bar" style:height=format!("{}px", 4 + 36 * n / most)></span>
                                <span>{answer}</span>
                            </span>
                        }
                    })
                    .collect_view()}
            </div>
        }
    });
    view! {
        <div class="step" data-testid="step">
            <h4>{format!("step {} · {} candidates · {rule}", step.index + 1, step.candidates.len())}</h4>
            <ol class="candidates">{candidates}</ol>
            {histogram}
        </div>
    }
}

/// One run: header, answer, steps. Each trace event adds its step to the page and updates the
/// header; the steps already shown stay as they are.
#[component]
fn Run(id: u64) -> impl IntoView {
    let state = expect_context::<AppState>();
    let run = Memo::new(move |_| {
        state
            .runs
            .with(|runs| runs.iter().find(|r| r.request.run == id).cloned())
    });
    let read = move |f: fn(&RunView) -> String| run.with(|r| r.as_ref().map(f).unwrap_or_default());
    let strategy = move || read(|r| r.request.spec.strategy.name().to_string());
    let status = move || {
        read(|r| match &r.status {
            RunStatus::Running => "running…".to_string(),
            RunStatus::Done { .. } if r.recorded => "recorded run".into(),
            RunStatus::Done { .. } => "done".into(),
            RunStatus::Failed(m) => m.clone(),
        })
    };
    let failed =
        move || run.with(|r| matches!(r.as_ref().map(|r| &r.status), Some(RunStatus::Failed(_))));
    let stats = move || {
        read(|r| {
            let (tokens, ms) = r.progress();
            let rate = if ms > 0.0 {
                tokens as f64 / (ms / 1000.0)
            } else {
                0.0
            };
            let memory = match r.status {
                RunStatus::Done { memory, .. } => memory_text(memory),
                _ => String::new(),
            };
            format!(
                "{tokens} tokens · {:.1} s · {rate:.0} tokens/s{memory}",
                ms / 1000.0
            )
        })
    };
    // What the engine host held when the run ended, bytes, for long-use checks to read.
    let memory = move |f: fn(MemoryReading) -> Option<u64>| {
        run.with(|r| match r.as_ref().map(|r| &r.status) {
            Some(RunStatus::Done { memory, .. }) => f(*memory).map(|b| b.to_string()),
            _ => None,
        })
    };
    let answer = move || {
        run.with(|r| match r.as_ref().map(|r| &r.status) {
            Some(RunStatus::Done { answer, .. }) => {
                Some(answer.clone().unwrap_or_else(|| "none".into()))
            }
            _ => None,
        })
    };
    let drafting =
        move || {
            run.with(|r| {
            let d = r.as_ref()?.drafting()?;
            let texts = d
                .texts
                .iter()
                .map(|t| {
                    let text = if t.is_empty() { "…".to_string() } else { t.replace('\n', "⏎") };
                    view! { <li class="candidate"><code class="text">{text}</code></li> }
                })
                .collect_view();
            let what = match r.as_ref()?.request.spec.strategy.name() {
                "beam" => "beams",
                "best-of-n" | "majority" => "samples",
                _ => "candidates",
            };
            Some(view! {
                <div class="step drafting" data-testid="drafting">
                    <h4>{format!("step {} · decoding {} {what}…", d.step + 1, d.texts.len())}</h4>
                    <ol class="candidates">{texts}</ol>
                </div>
            })
        })
        };
    let steps = move || {
        run.with(|r| {
            r.as_ref()
                .map(|r| r.steps().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
    };
    view! {
        <article class="run" data-testid="run-view" data-run=id.to_string() data-strategy=strategy>
            <header>
                <strong>{strategy}</strong>
                <span class="status" class:failed=failed data-testid="run-status">{status}</span>
                <span
                    class="stats"
                    data-testid="run-stats"
                    data-host-bytes=move || memory(|m| m.host_bytes)
                    data-device-bytes=move || memory(|m| m.device_bytes)
                >
                    {stats}
                </span>
            </header>
            <pre class="response" data-testid="response">{move || read(RunView::text)}</pre>
            {move || answer().map(|a| view! { <p class="answer">"answer: " <strong data-testid="answer">{a}</strong></p> })}
            <div class="steps">
                <For each=steps key=|step| step.index let:step>
                    <Step step=step />
                </For>
                {drafting}
            </div>
        </article>
    }
}

/// The runs on screen, side by side in compare mode.
#[component]
pub fn LiveView() -> impl IntoView {
    let state = expect_context::<AppState>();
    let ids = Memo::new(move |_| {
        state
            .runs
            .with(|runs| runs.iter().map(|r| r.request.run).collect::<Vec<_>>())
    });
    view! {
        <section class="runs">
            <For each=move || ids.get() key=|id| *id let:id>
                <Run id=id />
            </For>
        </section>
    }
}

/// What the engine host held when a run ended, for the run's stats line (empty when unknown):
/// ` · memory 41.2 MB` and, on a GPU, ` · GPU 12.0 MB`.
fn memory_text(memory: MemoryReading) -> String {
    let host = memory
        .host_bytes
        .map(|b| format!(" · memory {}", format_bytes(b)));
    let device = memory
        .device_bytes
        .map(|b| format!(" · GPU {}", format_bytes(b)));
    host.into_iter().chain(device).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ets_spec::trace::RolloutTrace;

    #[test]
    fn votes_count_rollout_answers() {
        let rollout = |a: Option<&str>| RolloutTrace {
            answer: a.map(str::to_string),
            reward: 0.0,
            log_weight: 0.0,
        };
        let candidate = |rollouts| CandidateTrace {
            text: String::new(),
            complete: false,
            recycled: false,
            log_energy: Some(0.0),
            rollouts,
        };
        let step = StepTrace {
            index: 0,
            candidates: vec![
                candidate(vec![rollout(Some("18")), rollout(None)]),
                candidate(vec![rollout(Some("18")), rollout(Some("7"))]),
            ],
            chosen: 0,
            selection: Selection::EnergyDraw {
                probabilities: vec![0.5, 0.5],
            },
            tokens: 0,
            elapsed_ms: 0.0,
        };
        assert_eq!(
            vote_histogram(&step),
            vec![("18".into(), 2), ("—".into(), 1), ("7".into(), 1)]
        );
        let mut scored = candidate(vec![rollout(Some("18")), rollout(None)]);
        scored.rollouts[1].reward = -2.345;
        assert_eq!(rollout_rewards(&scored), "0.00 · -2.35");
        assert_eq!(rollout_rewards(&candidate(Vec::new())), "");
    }
}
