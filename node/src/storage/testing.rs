//! Test helpers: engines to run a test against, and [`engine_tests!`], which
//! runs the same test functions against every engine.

use std::sync::Arc;

use super::{Engine, MemoryEngine, RocksEngine};

/// An engine under test, with what it needs to live (RocksDB's directory).
pub(crate) struct TestEngine {
    engine: Option<Arc<dyn Engine>>,
    dir: Option<tempfile::TempDir>,
}

impl TestEngine {
    pub(crate) fn rocks() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = RocksEngine::open(dir.path()).expect("open RocksDB");
        Self {
            engine: Some(Arc::new(engine)),
            dir: Some(dir),
        }
    }

    pub(crate) fn memory() -> Self {
        Self {
            engine: Some(Arc::new(MemoryEngine::new())),
            dir: None,
        }
    }

    pub(crate) fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone().expect("engine open")
    }

    /// Drops this handle on the engine (others, like snapshots, live on).
    pub(crate) fn close(&mut self) {
        self.engine = None;
    }

    /// Closes the engine and opens its storage again, as a restart would, or
    /// `None` for an engine that keeps nothing. Every other handle on the engine
    /// must be dropped first.
    pub(crate) fn reopen(&mut self) -> Option<Arc<dyn Engine>> {
        let dir = self.dir.as_ref()?;
        let engine = self.engine.take().expect("engine open");
        assert_eq!(
            Arc::strong_count(&engine),
            1,
            "reopen with the engine still in use"
        );
        drop(engine);
        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(dir.path()).expect("reopen"));
        self.engine = Some(engine.clone());
        Some(engine)
    }
}

/// For each `fn name(t: &mut TestEngine)` in scope, defines the tests
/// `rocks::name` and `memory::name` running it against each engine. Names
/// after `rocks_only:` run against RocksDB alone (persistence across reopen).
macro_rules! engine_tests {
    ($($name:ident),* $(,)? $(; rocks_only: $($rocks:ident),* $(,)?)?) => {
        mod rocks {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut $crate::storage::testing::TestEngine::rocks());
                }
            )*
            $($(
                #[test]
                fn $rocks() {
                    super::$rocks(&mut $crate::storage::testing::TestEngine::rocks());
                }
            )*)?
        }
        mod memory {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut $crate::storage::testing::TestEngine::memory());
                }
            )*
        }
    };
}
pub(crate) use engine_tests;
