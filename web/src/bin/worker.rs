//! The web worker that hosts the engine.

use gloo_worker::Registrable;

fn main() {
    console_error_panic_hook::set_once();
    ets_app::worker::EngineWorker::registrar()
        .encoding::<ets_app::worker::Json>()
        .register();
}
