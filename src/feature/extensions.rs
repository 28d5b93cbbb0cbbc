//! Per-session data of features, keyed by type: a feature keeps what it
//! needs about one session (carbons on, CSI state, …) here instead of in
//! the session core, which stays ignorant of features.

use std::any::{Any, TypeId};
use std::collections::HashMap;

/// A map from a type to one value of that type.
#[derive(Default)]
pub struct Extensions {
    map: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// The value of type `T`, if set.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
    }

    /// The value of type `T`, set to its default first if missing.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        self.map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::<T>::default())
            .downcast_mut::<T>()
            .expect("an entry under T's TypeId holds a T")
    }

    /// Sets the value of type `T`, returning the old one.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        self.map
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.map
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} entries)", self.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut e = Extensions::default();
        assert!(e.get::<u32>().is_none());
        *e.get_or_default::<u32>() += 2;
        assert_eq!(e.insert(7u32), Some(2));
        e.insert(String::from("x"));
        assert_eq!(e.get::<u32>(), Some(&7));
        assert_eq!(e.remove::<String>().as_deref(), Some("x"));
        assert!(e.get::<String>().is_none());
    }
}
