//! Per-session data of features, keyed by type: a feature keeps what it
//! needs about one session (carbons on, CSI state, …) here instead of in
//! the session core, which stays ignorant of features.

use std::any::{Any, TypeId};

/// A map from a type to one value of that type. A session holds a handful
/// of entries and they are read for every stanza it is sent, so they sit
/// in a short vector scanned by type id: no hashing, and an empty map
/// owns no allocation.
#[derive(Default)]
pub struct Extensions {
    entries: Vec<(TypeId, Box<dyn Any + Send + Sync>)>,
}

impl Extensions {
    fn position<T: Any>(&self) -> Option<usize> {
        let id = TypeId::of::<T>();
        self.entries.iter().position(|(t, _)| *t == id)
    }

    /// The value of type `T`, if set.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let i = self.position::<T>()?;
        self.entries[i].1.downcast_ref::<T>()
    }

    /// The value of type `T`, set to its default first if missing.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        let i = match self.position::<T>() {
            Some(i) => i,
            None => {
                self.entries.push((TypeId::of::<T>(), Box::<T>::default()));
                self.entries.len() - 1
            }
        };
        self.entries[i]
            .1
            .downcast_mut::<T>()
            .expect("an entry under T's TypeId holds a T")
    }

    /// Sets the value of type `T`, returning the old one.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        match self.position::<T>() {
            Some(i) => {
                let old = std::mem::replace(&mut self.entries[i].1, Box::new(value));
                old.downcast::<T>().ok().map(|b| *b)
            }
            None => {
                self.entries.push((TypeId::of::<T>(), Box::new(value)));
                None
            }
        }
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        let i = self.position::<T>()?;
        let (_, b) = self.entries.swap_remove(i);
        b.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} entries)", self.entries.len())
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
