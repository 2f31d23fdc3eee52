//! A framework that panics is a result, not a crash of the harness: every execution runs
//! under `guarded`, which turns a panic into an error naming the backend and the panic's
//! message, and keeps the panic's backtrace off the terminal.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{payload}{location}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes `Error::Backend` for `backend` ("panicked: ...").
pub fn guarded<T>(backend: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match r {
        Ok(r) => r,
        Err(_) => {
            let msg = MESSAGE.with(|m| m.borrow_mut().take()).unwrap_or_else(|| "a panic without a message".into());
            Err(Error::backend(backend, format!("panicked: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_that_names_the_backend() {
        let e = guarded::<()>("candle", || panic!("attempt to subtract with overflow")).unwrap_err().to_string();
        assert!(e.contains("candle") && e.contains("panicked: attempt to subtract with overflow"), "{e}");
        assert_eq!(guarded("engine", || Ok(3)).unwrap(), 3);
    }
}
