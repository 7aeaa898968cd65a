//! The ETS desktop app: the browser app's UI (`app/`, built into `web/dist-desktop`) in a Tauri 2
//! window, with the engine running natively in this process (`ets_desktop::engine`). The UI sends every
//! request through the `engine_request` command and hears every response as an
//! `engine-response` event, so it works as it does with the browser's worker. Models: the
//! bundled ones among the app's resources, downloads in the platform's cache folder, folders
//! opened with the native dialog (`ets_desktop::storage`) or named on the command line
//! (`ets-desktop --model PATH`, a model folder or a GGUF file). Share links arrive as `ets://`
//! deep links.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::path::Path;
use std::sync::Mutex;

use ets_engine::backend::BackendKind;
use ets_protocol::Request;
use tauri::{AppHandle, Emitter, Manager, State};
use tauri_plugin_deep_link::DeepLinkExt;
use tauri_plugin_dialog::DialogExt;

use ets_desktop::engine::{BACKEND_VAR, Desktop, Engine};
use ets_desktop::storage::ModelStore;

/// The event that carries the engine's responses to the UI.
const RESPONSE_EVENT: &str = "engine-response";
/// The event that hands the UI a deep link received while the app runs.
const OPEN_LINK_EVENT: &str = "open-link";

/// The deep link the app was started with, until the UI takes it.
struct StartLink(Mutex<Option<String>>);

/// The model named on the command line, until the UI takes it: (its folder, the GGUF file's
/// name or None for a model folder), or why the argument names no model.
type ModelLocation = (String, Option<String>);
struct StartModel(Mutex<Option<Result<ModelLocation, String>>>);

/// The PATH of `--model PATH` or `--model=PATH` among the command-line arguments.
fn model_argument(args: &[String]) -> Option<Result<String, String>> {
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.as_str() {
            "--model" => {
                Some(args.get(i + 1).cloned().ok_or_else(|| {
                    "--model needs a model folder or a GGUF file after it".to_string()
                }))
            }
            _ => arg
                .strip_prefix("--model=")
                .map(|path| Ok(path.to_string())),
        })
}

/// Where the model at `path` is: a GGUF file (its folder and name) or a model folder.
fn model_location(path: &Path) -> Result<ModelLocation, String> {
    let absolute =
        std::path::absolute(path).map_err(|e| format!("--model {}: {e}", path.display()))?;
    if absolute.is_dir() {
        return Ok((absolute.display().to_string(), None));
    }
    if !absolute.is_file() {
        return Err(format!(
            "--model {}: no such file or folder",
            path.display()
        ));
    }
    match (absolute.parent(), absolute.file_name()) {
        (Some(folder), Some(name)) => Ok((
            folder.display().to_string(),
            Some(name.to_string_lossy().into_owned()),
        )),
        _ => Err(format!(
            "--model {}: not a file in a folder",
            path.display()
        )),
    }
}

/// The model named on the command line, once: None when there is none (the UI then loads the
/// last model used).
#[tauri::command]
fn opened_model(model: State<'_, StartModel>) -> Result<Option<ModelLocation>, String> {
    model.0.lock().ok().and_then(|mut m| m.take()).transpose()
}

/// Hands one request to the engine.
#[tauri::command]
fn engine_request(request: Request, engine: State<'_, Engine>) -> Result<(), String> {
    engine.send(request).map_err(|e| e.to_string())
}

/// Asks for a model folder with the platform's dialog; None when the user cancels.
#[tauri::command]
async fn pick_model_folder(app: AppHandle) -> Result<Option<String>, String> {
    let picked = tauri::async_runtime::spawn_blocking(move || {
        app.dialog()
            .file()
            .set_title("Open a model folder (config.json, tokenizer.json, *.safetensors)")
            .blocking_pick_folder()
    })
    .await
    .map_err(|e| format!("the folder dialog failed: {e}"))?;
    picked
        .map(|folder| folder.into_path().map(|p| p.display().to_string()))
        .transpose()
        .map_err(|e| format!("the folder dialog gave no usable path: {e}"))
}

/// Asks for a GGUF file with the platform's dialog: (its folder, its name), or None when the
/// dialog is cancelled.
#[tauri::command]
async fn pick_model_file(app: AppHandle) -> Result<Option<(String, String)>, String> {
    let picked = tauri::async_runtime::spawn_blocking(move || {
        app.dialog()
            .file()
            .set_title("Open a GGUF model file")
            .add_filter("GGUF model", &["gguf", "GGUF"])
            .blocking_pick_file()
    })
    .await
    .map_err(|e| format!("the file dialog failed: {e}"))?;
    let Some(picked) = picked else {
        return Ok(None);
    };
    let path = picked
        .into_path()
        .map_err(|e| format!("the file dialog gave no usable path: {e}"))?;
    match (path.parent(), path.file_name()) {
        (Some(folder), Some(name)) => Ok(Some((
            folder.display().to_string(),
            name.to_string_lossy().into_owned(),
        ))),
        _ => Err(format!("{} is not a file", path.display())),
    }
}

/// The deep link the app was started with, once.
#[tauri::command]
fn opened_link(link: State<'_, StartLink>) -> Option<String> {
    link.0.lock().ok()?.take()
}

/// Starts the engine and listens for deep links.
fn setup(app: &mut tauri::App) -> Result<(), Box<dyn std::error::Error>> {
    let backend = match std::env::var(BACKEND_VAR) {
        Ok(name) => Some(name.parse::<BackendKind>()?),
        Err(_) => None,
    };
    let store = ModelStore::new(
        app.path().resource_dir()?.join("models"),
        app.path().app_cache_dir()?,
    );
    let handle = app.handle().clone();
    let engine = Engine::start(Desktop::new(store, backend), move |response| {
        // Emitting fails only once the app is closing: nothing is left to tell.
        let _ = handle.emit(RESPONSE_EVENT, &response);
    })?;
    app.manage(engine);

    // An AppImage is not installed, so it registers the ets:// scheme itself; installed
    // packages register it through their .desktop file.
    if std::env::var_os("APPIMAGE").is_some()
        && let Err(e) = app.deep_link().register_all()
    {
        eprintln!("ets-desktop: ets:// links will not open this app: {e}");
    }
    // The plugin takes a link that is the only argument; also look among several (a WebDriver
    // session adds its own).
    let start = app
        .deep_link()
        .get_current()?
        .and_then(|urls| urls.first().map(|url| url.to_string()))
        .or_else(|| std::env::args().skip(1).find(|a| a.starts_with("ets://")));
    app.manage(StartLink(Mutex::new(start)));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = model_argument(&args).map(|path| path.and_then(|p| model_location(Path::new(&p))));
    app.manage(StartModel(Mutex::new(model)));
    let handle = app.handle().clone();
    app.deep_link().on_open_url(move |event| {
        for url in event.urls() {
            let _ = handle.emit(OPEN_LINK_EVENT, url.to_string());
        }
    });
    Ok(())
}

fn main() {
    let run = tauri::Builder::default()
        // A second launch (an ets:// link clicked while the app runs) hands its link over to
        // this instance (the deep-link plugin's on_open_url) and brings the window forward.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            if let Some(window) = app.get_webview_window("main") {
                let _ = window.set_focus();
            }
        }))
        .plugin(tauri_plugin_deep_link::init())
        .plugin(tauri_plugin_dialog::init())
        .setup(setup)
        .invoke_handler(tauri::generate_handler![
            engine_request,
            pick_model_folder,
            pick_model_file,
            opened_link,
            opened_model
        ])
        .run(tauri::generate_context!());
    if let Err(e) = run {
        eprintln!("ets-desktop: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn the_model_argument_is_found_among_others() {
        assert_eq!(model_argument(&args(&["ets://open#run=x"])), None);
        assert_eq!(
            model_argument(&args(&["--x", "--model", "m.gguf"])),
            Some(Ok("m.gguf".into()))
        );
        assert_eq!(
            model_argument(&args(&["--model=/a/b"])),
            Some(Ok("/a/b".into()))
        );
        assert!(matches!(model_argument(&args(&["--model"])), Some(Err(_))));
    }

    #[test]
    fn a_model_is_a_folder_or_a_file_in_one() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let file = dir.join("m.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let folder = dir.display().to_string();
        assert_eq!(model_location(&dir), Ok((folder.clone(), None)));
        assert_eq!(model_location(&file), Ok((folder, Some("m.gguf".into()))));
        let missing = model_location(&dir.join("absent.gguf")).unwrap_err();
        assert!(missing.contains("no such file or folder"), "{missing}");
    }
}
