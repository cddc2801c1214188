//! `setters!`: the by-value builder setters of a configuration struct, written once for the
//! layers, the inner loop and the engine's prefetcher. It must hold nothing but the macro.

/// For each `field: Type` listed (with its doc comment), writes
/// `pub fn field(mut self, field: Type) -> Self`, which sets the field and returns the value.
#[macro_export]
macro_rules! setters {
    ($t:ty { $($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        impl $t {
            $(
                $(#[$doc])*
                pub fn $field(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}
