//! The live view of a run: the answer as it streams in, tokens/s and elapsed time, and for each
//! guidance step the M candidates with their log-energies (bars show each one's chance of being
//! drawn, softmax of log Ê), the rollouts' answers as a vote histogram, and the chosen
//! candidate highlighted.

use ets_engine::trace::StepTrace;
use leptos::prelude::*;

use crate::ui::state::{AppState, RunStatus, RunView};

/// Each candidate's probability of being drawn: softmax of the log-energies.
pub fn choice_probabilities(log_energies: &[f64]) -> Vec<f64> {
    let max = log_energies
        .iter()
        .copied()
        .filter(|e| e.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        let n = log_energies.len().max(1) as f64;
        return vec![1.0 / n; log_energies.len()];
    }
    let weights: Vec<f64> = log_energies.iter().map(|e| (e - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

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

/// One guidance step.
#[component]
fn Step(step: StepTrace) -> impl IntoView {
    let energies: Vec<f64> = step.candidates.iter().map(|c| c.log_energy).collect();
    let chances = choice_probabilities(&energies);
    let votes = vote_histogram(&step);
    let most = votes.first().map(|(_, n)| *n).unwrap_or(1).max(1);
    let candidates = step
        .candidates
        .iter()
        .zip(chances)
        .enumerate()
        .map(|(i, (c, chance))| {
            let chosen = i == step.chosen;
            // Line breaks show as ⏎ so each candidate stays on one row.
            let text = if c.text.is_empty() {
                "∅".to_string()
            } else {
                c.text.replace('\n', "⏎")
            };
            view! {
                <li class="candidate" class:chosen=chosen data-testid="candidate">
                    <span class="bar" style:width=format!("{:.1}%", chance * 100.0)></span>
                    <code class="text">{text}</code>
                    <span class="energy" title="log Ê: log mean exp(r/λ) over the rollouts">
                        {format!("log Ê {:.2}", c.log_energy)}
                    </span>
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
            <h4>{format!("step {} · {} candidates", step.index + 1, step.candidates.len())}</h4>
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
            format!(
                "{tokens} tokens · {:.1} s · {rate:.0} tokens/s",
                ms / 1000.0
            )
        })
    };
    let answer = move || {
        run.with(|r| match r.as_ref().map(|r| &r.status) {
            Some(RunStatus::Done { answer }) => {
                Some(answer.clone().unwrap_or_else(|| "none".into()))
            }
            _ => None,
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
        <article class="run" data-testid="run-view" data-strategy=strategy>
            <header>
                <strong>{strategy}</strong>
                <span class="status" class:failed=failed data-testid="run-status">{status}</span>
                <span class="stats" data-testid="run-stats">{stats}</span>
            </header>
            <pre class="response" data-testid="response">{move || read(RunView::text)}</pre>
            {move || answer().map(|a| view! { <p class="answer">"answer: " <strong data-testid="answer">{a}</strong></p> })}
            <div class="steps">
                <For each=steps key=|step| step.index let:step>
                    <Step step=step />
                </For>
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

#[cfg(test)]
mod tests {
    use super::*;
    use ets_engine::trace::{CandidateTrace, RolloutTrace};

    #[test]
    fn chances_follow_the_softmax_of_log_energies() {
        let p = choice_probabilities(&[0.0, 10f64.ln(), f64::NEG_INFINITY]);
        assert!((p[0] - 1.0 / 11.0).abs() < 1e-12 && (p[1] - 10.0 / 11.0).abs() < 1e-12);
        assert_eq!(p[2], 0.0);
        assert_eq!(
            choice_probabilities(&[f64::NEG_INFINITY; 2]),
            vec![0.5, 0.5]
        );
    }

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
            log_energy: 0.0,
            rollouts,
        };
        let step = StepTrace {
            index: 0,
            candidates: vec![
                candidate(vec![rollout(Some("18")), rollout(None)]),
                candidate(vec![rollout(Some("18")), rollout(Some("7"))]),
            ],
            chosen: 0,
            tokens: 0,
            elapsed_ms: 0.0,
        };
        assert_eq!(
            vote_histogram(&step),
            vec![("18".into(), 2), ("—".into(), 1), ("7".into(), 1)]
        );
    }
}
