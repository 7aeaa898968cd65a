//! Share links: the Share button packs the last finished run into a URL (copied to the
//! clipboard and shown), and a page opened with such a link, a link pasted into the box, or (in
//! the desktop app) an `ets://` deep link shows the recorded run at once and offers Re-run; a
//! bad link shows why and runs nothing. The desktop app's links point at the browser app.

use ets_protocol::MemoryReading;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::share::{ShareError, SharedRun, decode, encode, fragment_of};
use crate::ui::assistant::next_run_id;
use crate::ui::state::{AppState, RunStatus, RunView};
use crate::ui::{engine, tauri};

/// The desktop app's command that returns the deep link it was started with, and the event
/// that carries later ones.
const OPENED_LINK: &str = "opened_link";
const OPEN_LINK_EVENT: &str = "open-link";

/// Opens the run in the page's fragment, if there is one, and in the desktop app the deep
/// links it is handed (at start and later).
pub fn open_links(state: AppState) {
    let hash = window().location().hash().unwrap_or_default();
    if hash.len() > 1 {
        open_shared(state, &hash);
    }
    if engine::is_desktop() {
        let listening =
            tauri::listen(
                OPEN_LINK_EVENT,
                move |link: Result<String, String>| match link {
                    Ok(link) => open_shared(state, &link),
                    Err(e) => state.error.set(Some(format!("a deep link: {e}"))),
                },
            );
        if let Err(e) = listening {
            state.error.set(Some(e));
        }
        spawn_local(async move {
            match tauri::invoke::<_, Option<String>>(OPENED_LINK, &()).await {
                Ok(Some(link)) => open_shared(state, &link),
                Ok(None) => {}
                Err(e) => state.error.set(Some(format!("the deep link: {e}"))),
            }
        });
    }
}

/// The run a link holds, refused where its answer would not fit its model's context (where
/// that is known: a bundled or loaded model; otherwise the engine refuses it on Re-run).
fn decode_for(state: AppState, link: &str) -> Result<SharedRun, String> {
    let shared = decode(fragment_of(link)).map_err(|e| e.to_string())?;
    if let Some((diffusion, context)) = state.context_of(&shared.model) {
        shared
            .spec
            .fits(diffusion, context)
            .map_err(|e| ShareError::Refused(e.to_string()).to_string())?;
    }
    Ok(shared)
}

/// Shows the run a share link holds as recorded and takes its settings. A damaged or refused
/// link sets the error and changes nothing else.
fn open_shared(state: AppState, link: &str) {
    match decode_for(state, link) {
        Ok(shared) => {
            state.settings.update(|s| {
                *s = s.from_run(
                    &shared.model,
                    shared.draft.as_deref(),
                    &shared.question,
                    shared.system.as_deref(),
                    &shared.spec,
                )
            });
            let answer = shared.answer().map(str::to_string);
            let request = ets_protocol::SolveRequest {
                run: 0,
                model: shared.model.clone(),
                draft: shared.draft.clone(),
                question: shared.question.clone(),
                system: shared.system.clone(),
                spec: shared.spec.clone(),
            };
            let status = if shared.trace.is_empty() {
                RunStatus::Failed("the link carries no trace (too long); press Re-run".into())
            } else {
                RunStatus::Done {
                    answer,
                    memory: MemoryReading::default(),
                }
            };
            state.error.set(None);
            state.runs.set(vec![RunView {
                request,
                events: shared.trace,
                status,
                recorded: true,
                drafts: None,
            }]);
        }
        Err(e) => state.error.set(Some(e)),
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
        run.request.system.clone(),
        run.request.spec.clone(),
        run.events.clone(),
    );
    let base = if engine::is_desktop() {
        state.settings.with_untracked(|s| s.web_app_url.clone())
    } else {
        window().location().href().unwrap_or_default()
    };
    // Either address may carry a fragment of its own; the run's replaces it.
    let base = base.split('#').next().unwrap_or_default();
    Some(format!("{base}#{}", encode(&shared)))
}

/// Share, Re-run, and a box to open a link.
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
            for id in std::iter::once(request.model.clone()).chain(request.helper_models()) {
                engine::load(state, &id, engine::source_of(state, &id));
            }
            engine::run(state, vec![request]);
        }
    };
    let pasted = RwSignal::new(String::new());
    let open = move || {
        let link = pasted.get_untracked();
        if !link.trim().is_empty() {
            open_shared(state, &link);
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
            <form class="open-link" on:submit=move |ev| {
                ev.prevent_default();
                open();
            }>
                <input
                    type="text"
                    placeholder="paste a share link to open it"
                    data-testid="link-input"
                    bind:value=pasted
                />
                <button type="submit" data-testid="open-link">"Open"</button>
            </form>
            <Show when=engine::is_desktop>
                <label class="hint">
                    "Links point at the browser app at "
                    <input
                        type="url"
                        data-testid="web-app-url"
                        prop:value=move || state.settings.with(|s| s.web_app_url.clone())
                        on:change=move |ev| {
                            let url = event_target_value(&ev);
                            state.settings.update(|s| s.web_app_url = url);
                        }
                    />
                </label>
            </Show>
        </section>
    }
}
