//! Exact sets sized for sessions: most hold a few dozen members, so a sorted vector (a few bytes
//! a member, no table overhead) until [`SMALL`] members, then a hash set.

use std::hash::Hash;

use foldhash::{HashSet, HashSetExt};
use uuid::Uuid;

use super::state::TypeId;

/// Members kept in a sorted vector before a set turns into a hash set: inserting into a sorted
/// vector moves up to this many members.
const SMALL: usize = 256;

#[derive(Debug, Clone)]
pub enum CompactSet<T: Ord + Hash> {
    Small(Vec<T>),
    Large(HashSet<T>),
}

impl<T: Ord + Hash + Copy> Default for CompactSet<T> {
    fn default() -> Self {
        CompactSet::Small(Vec::new())
    }
}

impl<T: Ord + Hash + Copy> CompactSet<T> {
    /// Whether `member` is new.
    pub fn insert(&mut self, member: T) -> bool {
        match self {
            CompactSet::Small(members) => match members.binary_search(&member) {
                Ok(_) => false,
                Err(at) => {
                    members.insert(at, member);
                    if members.len() > SMALL {
                        *self = CompactSet::Large(members.iter().copied().collect());
                    }
                    true
                }
            },
            CompactSet::Large(members) => members.insert(member),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CompactSet::Small(members) => members.len(),
            CompactSet::Large(members) => members.len(),
        }
    }

    /// The members, in no particular order.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            CompactSet::Small(members) => members.clone(),
            CompactSet::Large(members) => members.iter().copied().collect(),
        }
    }
}

/// A session's valid events as (event id, type) pairs, counting the distinct ids as it goes
/// (an id may come with two types: ClickHouse counts it once in `events` and once per type).
#[derive(Debug, Clone, Default)]
pub struct TypedEvents {
    pairs: CompactSet<(Uuid, TypeId)>,
    /// Only once `pairs` is large: the ids, which a sorted vector finds beside each other.
    large_ids: Option<HashSet<Uuid>>,
    distinct_ids: u64,
}

impl TypedEvents {
    /// Whether the pair is new.
    pub fn insert(&mut self, event_id: Uuid, type_id: TypeId) -> bool {
        let new_id = match (&self.pairs, &self.large_ids) {
            (CompactSet::Small(pairs), _) => {
                let at = pairs.partition_point(|&(id, _)| id < event_id);
                pairs.get(at).is_none_or(|&(id, _)| id != event_id)
            }
            (CompactSet::Large(_), Some(ids)) => !ids.contains(&event_id),
            (CompactSet::Large(_), None) => unreachable!("large pairs keep their ids"),
        };
        let new_pair = self.pairs.insert((event_id, type_id));
        if new_id {
            self.distinct_ids += 1;
        }
        match (&self.pairs, &mut self.large_ids) {
            (CompactSet::Large(_), Some(ids)) => {
                ids.insert(event_id);
            }
            (CompactSet::Large(pairs), ids @ None) => {
                let mut all = HashSet::with_capacity(pairs.len());
                all.extend(pairs.iter().map(|&(id, _)| id));
                *ids = Some(all);
            }
            (CompactSet::Small(_), _) => {}
        }
        new_pair
    }

    /// Every (event id, type) pair, in no particular order.
    pub fn pairs(&self) -> Vec<(Uuid, TypeId)> {
        self.pairs.to_vec()
    }

    pub fn distinct_ids(&self) -> u64 {
        self.distinct_ids
    }

    pub fn is_empty(&self) -> bool {
        self.distinct_ids == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_counts_each_member_once_before_and_after_it_grows_large() {
        let mut set = CompactSet::default();
        for round in 0..2 {
            for member in (0..1_000u64).rev() {
                assert_eq!(set.insert(member), round == 0, "member {member}");
            }
        }
        assert_eq!(set.len(), 1_000);
        assert!(matches!(set, CompactSet::Large(_)));
    }

    #[test]
    fn an_id_with_two_types_is_one_event_and_two_typed_events() {
        let mut events = TypedEvents::default();
        for id in 0..600u128 {
            assert!(events.insert(Uuid::from_u128(id), 0));
            assert!(
                events.insert(Uuid::from_u128(id), 1),
                "the second type of {id}"
            );
            assert!(!events.insert(Uuid::from_u128(id), 0), "{id} again");
        }
        assert_eq!(events.distinct_ids(), 600);
        assert_eq!(events.pairs.len(), 1_200);
    }
}
