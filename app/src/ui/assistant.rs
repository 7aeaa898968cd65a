//! The assistant: the question, the strategy and its parameters (with short explanations),
//! Run / Stop, and compare mode (plain sampling beside the chosen strategy).

use ets_spec::answer::Extraction;
use ets_spec::strategy::{MAX_BUDGET, MAX_NEW_TOKENS, MAX_ROLLOUTS, STRATEGIES};
use leptos::prelude::*;

use crate::ui::engine;
use crate::ui::state::{AppState, REWARDS, RunStatus, Settings};
use ets_protocol::SolveRequest;

/// Run ids grow across the page's life; a new run's events never mix with an old one's.
pub(crate) fn next_run_id() -> u64 {
    thread_local!(static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(1) });
    NEXT.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// The requests a click on Run makes: the chosen strategy, and plain sampling first in
/// compare mode; `diffusion` when the model is a masked diffusion model.
pub fn requests(settings: &Settings, diffusion: bool) -> Result<Vec<SolveRequest>, String> {
    if settings.question.trim().is_empty() {
        return Err("type a question first".into());
    }
    let mut strategies = vec![settings.strategy.as_str()];
    if settings.compare && settings.strategy != "sample" {
        strategies.insert(0, "sample");
    }
    strategies
        .into_iter()
        .map(|name| {
            Ok(SolveRequest {
                run: next_run_id(),
                model: settings.model.clone(),
                draft: (name == "ets-is").then(|| settings.draft.clone()),
                question: settings.question.clone(),
                system: settings.system_message(),
                spec: settings.spec(name, diffusion)?,
            })
        })
        .collect()
}

/// Starts the runs the settings describe (loading the draft model and the reward's model first
/// when needed).
fn start_runs(state: AppState) {
    let settings = state.settings.get_untracked();
    settings.save();
    state.error.set(None);
    let diffusion = state
        .loaded
        .with(|models| models.iter().any(|m| m.id == settings.model && m.diffusion));
    match requests(&settings, diffusion) {
        Ok(requests) => {
            for id in requests.iter().flat_map(SolveRequest::helper_models) {
                engine::load(state, &id, engine::source_of(state, &id));
            }
            engine::run(state, requests);
        }
        Err(e) => state.error.set(Some(e)),
    }
}

/// A numeric parameter field bound to one setting; a value above `max` (which may follow the
/// loaded model) is refused with a message (and the setting keeps its value).
#[component]
fn Number<T>(
    label: &'static str,
    hint: &'static str,
    get: fn(&Settings) -> T,
    set: fn(&mut Settings, T),
    #[prop(default = "1")] step: &'static str,
    #[prop(optional, into)] max: Option<Signal<usize>>,
) -> impl IntoView
where
    T: std::str::FromStr + ToString + Send + Sync + 'static,
{
    let state = expect_context::<AppState>();
    view! {
        <label class="param" title=hint>
            <span>{label}</span>
            <input
                type="number"
                step=step
                min="0"
                max=move || max.map(|m| m.get().to_string())
                prop:value=move || state.settings.with(|s| get(s).to_string())
                on:change=move |ev| {
                    let text = event_target_value(&ev);
                    let max = max.map(|m| m.get_untracked());
                    if let (Some(max), Ok(v)) = (max, text.parse::<f64>())
                        && v > max as f64
                    {
                        state.error.set(Some(format!("{label} must be at most {max}, got {text}")));
                        // Shows the kept value again.
                        state.settings.update(|_| {});
                        return;
                    }
                    if let Ok(v) = text.parse::<T>() {
                        state.settings.update(|s| set(s, v));
                    }
                }
            />
            <small>{hint}</small>
        </label>
    }
}

/// The question box and the parameters.
#[component]
pub fn Assistant() -> impl IntoView {
    let state = expect_context::<AppState>();
    let running = move || {
        state.runs.with(|r| {
            r.iter()
                .any(|r| r.status == RunStatus::Running && !r.recorded)
        })
    };
    let is_ets = move || state.settings.with(|s| s.strategy.starts_with("ets"));
    // ETS and particle filtering advance a block at a time, weighing by exp(r/λ).
    let is_guided = move || {
        state
            .settings
            .with(|s| s.strategy.starts_with("ets") || s.strategy == "particle-filter")
    };
    // The answer may take up the loaded model's whole context, and no more.
    let answer_max = Signal::derive(move || {
        let model = state.settings.with(|s| s.model.clone());
        state
            .context_of(&model)
            .map_or(MAX_NEW_TOKENS, |(_, context)| context.min(MAX_NEW_TOKENS))
    });
    let explanation = move || {
        let name = state.settings.with(|s| s.strategy.clone());
        STRATEGIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
            .unwrap_or_default()
    };
    view! {
        <section class="panel assistant">
            <textarea
                data-testid="question"
                rows="3"
                placeholder="Ask a question…"
                prop:value=move || state.settings.with(|s| s.question.clone())
                on:input=move |ev| state.settings.update(|s| s.question = event_target_value(&ev))
            ></textarea>
            <details class="system" data-testid="system-details">
                <summary>"system prompt (chat models)"</summary>
                <textarea
                    data-testid="system"
                    rows="2"
                    placeholder="Instructions put ahead of the question in the model's chat template; empty: none"
                    prop:value=move || state.settings.with(|s| s.system.clone())
                    on:input=move |ev| state.settings.update(|s| s.system = event_target_value(&ev))
                ></textarea>
            </details>
            <div class="row">
                <label>
                    "Strategy "
                    <select
                        data-testid="strategy"
                        prop:value=move || state.settings.with(|s| s.strategy.clone())
                        on:change=move |ev| state.settings.update(|s| s.strategy = event_target_value(&ev))
                    >
                        {STRATEGIES
                            .iter()
                            .map(|(name, _)| view! { <option value=*name>{*name}</option> })
                            .collect_view()}
                    </select>
                </label>
                <span class="hint">{explanation}</span>
            </div>
            <div class="params">
                <Number label="M" hint="candidates per step (samples, beams)" get=|s| s.m set=|s, v| s.m = v max=MAX_BUDGET />
                <Show when=is_ets>
                    <Number label="K" hint="rollouts per candidate" get=|s| s.k set=|s, v| s.k = v max=MAX_ROLLOUTS />
                </Show>
                <Show when=is_guided>
                    <Number label="block" hint="tokens per guidance step" get=|s| s.block set=|s, v| s.block = v />
                    <Number label="λ" hint="reward temperature: lower trusts the reward more" get=|s| s.lambda set=|s, v| s.lambda = v step="0.01" />
                </Show>
                <Show when=is_ets>
                    <label class="param" title="reuse the chosen candidate's rollouts as the next step's candidates">
                        <span>"recycle"</span>
                        <input
                            type="checkbox"
                            prop:checked=move || state.settings.with(|s| s.recycle)
                            on:change=move |ev| state.settings.update(|s| s.recycle = event_target_checked(&ev))
                        />
                        <small>"rollouts as candidates"</small>
                    </label>
                </Show>
                <Number label="temperature" hint="0 is greedy" get=|s| s.temperature set=|s, v| s.temperature = v step="0.1" />
                <Number label="top-k" hint="0: all tokens" get=|s| s.top_k set=|s, v| s.top_k = v />
                <Number label="top-p" hint="1: all tokens" get=|s| s.top_p set=|s, v| s.top_p = v step="0.05" />
                <Number label="max tokens" hint="length of the answer" get=|s| s.max_tokens set=|s, v| s.max_tokens = v max=answer_max />
                <Number label="seed" hint="same seed, same run" get=|s| s.seed set=|s, v| s.seed = v />
                <label class="param" title="how a rollout is scored: a name, or format:REGEX">
                    <span>"reward"</span>
                    <input
                        type="text"
                        list="rewards"
                        prop:value=move || state.settings.with(|s| s.reward.clone())
                        on:change=move |ev| state.settings.update(|s| s.reward = event_target_value(&ev))
                    />
                    <datalist id="rewards">
                        {REWARDS
                            .iter()
                            .map(|(name, hint)| view! { <option value=*name>{*hint}</option> })
                            .collect_view()}
                    </datalist>
                    <small>"how a rollout is scored"</small>
                </label>
                <label class="param" title="how the answer is read from a response">
                    <span>"answer"</span>
                    <select
                        prop:value=move || state.settings.with(|s| s.extraction.clone())
                        on:change=move |ev| state.settings.update(|s| s.extraction = event_target_value(&ev))
                    >
                        {Extraction::NAMES
                            .iter()
                            .map(|(name, hint)| view! { <option value=*name title=*hint>{*name}</option> })
                            .collect_view()}
                    </select>
                    <small>"strict: #### n only"</small>
                </label>
                <Show when=move || state.settings.with(|s| s.strategy == "ets-is")>
                    <label class="param">
                        <span>"draft model"</span>
                        <input
                            type="text"
                            prop:value=move || state.settings.with(|s| s.draft.clone())
                            on:change=move |ev| state.settings.update(|s| s.draft = event_target_value(&ev))
                        />
                        <small>"smaller model, same tokenizer"</small>
                    </label>
                    <Number label="clip" hint="log-weight clip; 0: none" get=|s| s.clip set=|s, v| s.clip = v step="0.5" />
                </Show>
            </div>
            <details class="diffusion">
                <summary>"diffusion schedule (masked diffusion models)"</summary>
                <div class="params">
                <Number label="answer tokens" hint="the answer's length" get=|s| s.gen_length set=|s, v| s.gen_length = v max=answer_max />
                <Number label="block length" hint="divides the answer" get=|s| s.block_length set=|s, v| s.block_length = v />
                <Number label="steps" hint="denoising steps in all" get=|s| s.diffusion_steps set=|s, v| s.diffusion_steps = v />
                <label class="param" title="which proposals a denoising step keeps">
                    <span>"remasking"</span>
                    <select
                        prop:value=move || state.settings.with(|s| s.remasking.clone())
                        on:change=move |ev| state.settings.update(|s| s.remasking = event_target_value(&ev))
                    >
                        <option value="low-confidence">"low-confidence"</option>
                        <option value="random">"random"</option>
                    </select>
                    <small>"keep the most confident"</small>
                </label>
                </div>
            </details>
            <div class="row">
                <label>
                    <input
                        type="checkbox"
                        data-testid="compare"
                        prop:checked=move || state.settings.with(|s| s.compare)
                        on:change=move |ev| state.settings.update(|s| s.compare = event_target_checked(&ev))
                    />
                    " compare with plain sampling"
                </label>
                <button
                    data-testid="run"
                    class="primary"
                    disabled=move || running() || !state.is_loaded(&state.settings.with(|s| s.model.clone()))
                    on:click=move |_| start_runs(state)
                >
                    "Run"
                </button>
                // Stop ends a run, the runs waiting for it, and a model download in progress.
                <button
                    data-testid="stop"
                    disabled=move || !running() && state.progress.with(Option::is_none)
                    on:click=move |_| engine::stop(state)
                >
                    "Stop"
                </button>
            </div>
        </section>
    }
}
