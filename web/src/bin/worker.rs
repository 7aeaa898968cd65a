//! The web worker that hosts the engine.

use gloo_worker::Registrable;

fn main() {
    console_error_panic_hook::set_once();
    ets_app::browser::worker::EngineWorker::registrar()
        .encoding::<ets_app::browser::worker::Json>()
        .register();
}
