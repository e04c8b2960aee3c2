//! Helpers shared by unit tests.

use std::future::Future;

/// Something callable whose returned future's size is known without calling it.
pub(crate) trait FutureSize<Args> {
    fn future_size(&self) -> usize;
}

macro_rules! future_size_for_arity {
    ($($arg:ident),*) => {
        impl<Func, Fut, $($arg),*> FutureSize<($($arg,)*)> for Func
        where
            Func: FnOnce($($arg),*) -> Fut,
            Fut: Future,
        {
            fn future_size(&self) -> usize {
                std::mem::size_of::<Fut>()
            }
        }
    };
}

future_size_for_arity!(A, B);
future_size_for_arity!(A, B, C);
future_size_for_arity!(A, B, C, D);
future_size_for_arity!(A, B, C, D, E);
future_size_for_arity!(A, B, C, D, E, F);

/// The size of the future an async fn returns (the state it keeps across awaits), without
/// calling it.
pub(crate) fn future_size<Args>(f: impl FutureSize<Args>) -> usize {
    f.future_size()
}
