//! Share links: the Share button packs the last finished run into a URL (copied to the
//! clipboard and shown), and a page opened with such a link shows the recorded run at once and
//! offers Re-run; a bad link shows why and runs nothing.

use leptos::prelude::*;

use crate::share::{SharedRun, decode, encode};
use crate::ui::assistant::next_run_id;
use crate::ui::engine;
use crate::ui::state::{AppState, RunStatus, RunView};

/// The page's URL without its fragment.
fn page_url() -> String {
    let location = window().location();
    let href = location.href().unwrap_or_default();
    href.split('#').next().unwrap_or_default().to_string()
}

/// Opens the run in the page's fragment, if there is one: shows it as recorded and takes its
/// settings. A damaged link sets the error and changes nothing else.
pub fn open_link(state: AppState) {
    let hash = window().location().hash().unwrap_or_default();
    if hash.len() <= 1 {
        return;
    }
    match decode(&hash) {
        Ok(shared) => {
            state.settings.update(|s| {
                *s = s.from_run(
                    &shared.model,
                    shared.draft.as_deref(),
                    &shared.question,
                    &shared.spec,
                )
            });
            let answer = shared.answer().map(str::to_string);
            let request = crate::protocol::SolveRequest {
                run: 0,
                model: shared.model.clone(),
                draft: shared.draft.clone(),
                question: shared.question.clone(),
                spec: shared.spec.clone(),
            };
            let status = if shared.trace.is_empty() {
                RunStatus::Failed("the link carries no trace (too long); press Re-run".into())
            } else {
                RunStatus::Done { answer }
            };
            state.runs.set(vec![RunView {
                request,
                events: shared.trace,
                status,
                recorded: true,
            }]);
        }
        Err(e) => state.error.set(Some(e.to_string())),
    }
}

/// The link for the last finished run.
fn link_for(state: AppState) -> Option<String> {
    let runs = state.runs.get_untracked();
    let run = runs
        .iter()
        .rev()
        .find(|r| matches!(r.status, RunStatus::Done { .. }))?;
    let shared = SharedRun::new(
        run.request.model.clone(),
        run.request.draft.clone(),
        run.request.question.clone(),
        run.request.spec.clone(),
        run.events.clone(),
    );
    Some(format!("{}#{}", page_url(), encode(&shared)))
}

/// Share and Re-run.
#[component]
pub fn SharePanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let finished = move || {
        state
            .runs
            .with(|r| r.iter().any(|r| matches!(r.status, RunStatus::Done { .. })))
    };
    let recorded = move || state.runs.with(|r| r.iter().any(|r| r.recorded));
    let share = move |_| {
        if let Some(url) = link_for(state) {
            // The clipboard may be refused (no permission); the link is shown either way.
            let _ = window().navigator().clipboard().write_text(&url);
            state.share_url.set(Some(url));
        }
    };
    // Re-run computes the recorded request again, exactly as the link gave it.
    let rerun = move |_| {
        let recorded = state
            .runs
            .with_untracked(|r| r.iter().find(|r| r.recorded).map(|r| r.request.clone()));
        if let Some(mut request) = recorded {
            request.run = next_run_id();
            for id in std::iter::once(&request.model).chain(&request.draft) {
                engine::load(state, id, engine::source_of(state, id));
            }
            engine::run(state, vec![request]);
        }
    };
    view! {
        <section class="share">
            <Show when=recorded>
                <button data-testid="rerun" on:click=rerun disabled=move || {
                    !state.is_loaded(&state.settings.with(|s| s.model.clone()))
                }>"Re-run"</button>
            </Show>
            <button data-testid="share" disabled=move || !finished() on:click=share>
                "Share"
            </button>
            {move || {
                state.share_url.get().map(|url| {
                    view! {
                        <input class="share-url" data-testid="share-url" readonly prop:value=url />
                        <span class="hint">"copied"</span>
                    }
                })
            }}
        </section>
    }
}
