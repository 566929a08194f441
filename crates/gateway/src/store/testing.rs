//! The store's tests on both backends: [`on_both!`] turns each `async fn
//! name(fx: Fx)` into `name::sqlite` and `name::postgres`. The PostgreSQL
//! one gets a fresh database on the test binary's throwaway cluster
//! (`execgate_testkit::pg`), or prints that it was skipped when PostgreSQL
//! cannot start here (a failure with `EXECGATE_REQUIRE_POSTGRES=1`).

use std::future::Future;

use super::Store;

/// Where a test's store lives: a temp data dir, and a PostgreSQL database
/// when the test runs on PostgreSQL.
pub struct Fx {
    pub dir: tempfile::TempDir,
    pub url: Option<String>,
}

impl Fx {
    /// Opens the store (again: a second `Store` on the same data, as a
    /// restart or another replica would).
    pub async fn open(&self) -> Store {
        Store::open_either(self.url.as_deref(), self.dir.path())
            .await
            .unwrap()
    }

    pub fn is_postgres(&self) -> bool {
        self.url.is_some()
    }
}

pub async fn run<F, Fut>(postgres: bool, test: &str, f: F)
where
    F: FnOnce(Fx) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = if postgres {
        match execgate_testkit::pg::database(test) {
            Some(url) => Some(url),
            None => return,
        }
    } else {
        None
    };
    f(Fx { dir, url }).await
}

/// `mod name { sqlite, postgres }` for each `async fn name(fx: Fx)`.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test]
                async fn sqlite() {
                    $crate::store::testing::run(false, stringify!($test), super::$test).await
                }
                #[tokio::test]
                async fn postgres() {
                    $crate::store::testing::run(true, stringify!($test), super::$test).await
                }
            }
        )*
    };
}
pub(crate) use on_both;
