//! What the operator last wrote of each object, so that an unchanged object costs no API call —
//! not on the next reconcile, and not minutes later: in the steady state the operator makes no
//! writes at all (`make bench-scale` counts them from the API server's audit log).
//!
//! An entry lives until the object's watch shows that the object is no longer what we wrote:
//! another version than our write's answer (`version_of`: someone edited it), a deletion of an
//! object we applied, a re-creation of one we deleted, or a re-list of the kind (the watch lost
//! events, so anything may have changed unseen). The watches
//! of every kind the operator writes report here (operator/stores.rs), and the same events
//! trigger the owning group's reconcile, which then writes the object again.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::names::HTTPROUTE_KIND;

/// What tells the object as we left it from a changed one, from its metadata. Kinds whose
/// status another controller writes (StatefulSets, PodDisruptionBudgets, HTTPRoutes: status
/// subresources) change their resourceVersion with every status update, which changes nothing
/// we wrote: for them the generation (which moves with the spec only) with the labels and
/// annotations. For the others the resourceVersion.
pub fn version_of(kind: &str, meta: &ObjectMeta) -> Option<String> {
    if [StatefulSet::KIND, PodDisruptionBudget::KIND, HTTPROUTE_KIND].contains(&kind) {
        let generation = meta.generation?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(&meta.labels, &meta.annotations), &mut h);
        Some(format!(
            "{generation}/{:016x}",
            std::hash::Hasher::finish(&h)
        ))
    } else {
        meta.resource_version.clone()
    }
}

/// An object the operator writes: its kind (as in `Desired`), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Last {
    /// Applied with this content; the server's answer had this `version_of`.
    Applied { hash: u64, version: Option<String> },
    /// Deleted (or found absent) by us.
    Deleted,
}

/// What a watch saw of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Created or changed, now at this `version_of`.
    Present {
        version: Option<&'a str>,
    },
    Deleted,
}

#[derive(Default)]
pub struct AppliedCache {
    entries: Mutex<HashMap<ObjectKey, Last>>,
}

impl AppliedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Last>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when we applied exactly this content and nothing has changed it since.
    pub fn applied(&self, key: &ObjectKey, hash: u64) -> bool {
        matches!(self.lock().get(key), Some(Last::Applied { hash: h, .. }) if *h == hash)
    }

    /// True when this process applied the object (any content) and nothing has removed or
    /// changed it since: it is the group's.
    pub fn written(&self, key: &ObjectKey) -> bool {
        matches!(self.lock().get(key), Some(Last::Applied { .. }))
    }

    pub fn record_applied(&self, key: ObjectKey, hash: u64, version: Option<String>) {
        self.lock().insert(key, Last::Applied { hash, version });
    }

    /// True when we deleted the object and it has not come back since.
    pub fn deleted(&self, key: &ObjectKey) -> bool {
        self.lock().get(key) == Some(&Last::Deleted)
    }

    pub fn record_deleted(&self, key: ObjectKey) {
        self.lock().insert(key, Last::Deleted);
    }

    /// A watch event for one object: forgets our entry when the object is no longer what we
    /// left it as. Our own writes come back with the version we recorded and keep it (one
    /// that arrives before we recorded it costs one more, unchanging, apply).
    ///
    /// Returns whether the event is worth a reconcile of the object's group: not when the object
    /// is exactly as we left it (our own write coming back, a status update).
    pub fn seen(&self, key: &ObjectKey, seen: Seen<'_>) -> bool {
        let mut entries = self.lock();
        let stale = match (entries.get(key), seen) {
            // Not written by this process (yet): its group's reconcile decides.
            (None, _) => return true,
            (Some(Last::Applied { .. }), Seen::Deleted) => true,
            (Some(Last::Applied { version: ours, .. }), Seen::Present { version }) => {
                ours.as_deref() != version || version.is_none()
            }
            (Some(Last::Deleted), Seen::Present { .. }) => true,
            (Some(Last::Deleted), Seen::Deleted) => false,
        };
        if stale {
            entries.remove(key);
        }
        stale
    }

    /// The watch of `kind` re-lists: events may have been missed, so every entry of the kind is
    /// forgotten (each object is applied once more).
    pub fn relisted(&self, kind: &str) {
        self.lock().retain(|k, _| k.kind != kind);
    }

    /// Feeds one watch event of `kind`; returns whether it is worth a reconcile (`seen`).
    pub fn watched<K: ResourceExt>(&self, kind: &'static str, event: &watcher::Event<K>) -> bool {
        let key = |o: &K| ObjectKey::new(kind, &o.namespace().unwrap_or_default(), &o.name_any());
        match event {
            watcher::Event::Init => {
                self.relisted(kind);
                true
            }
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => self.seen(
                &key(o),
                Seen::Present {
                    version: version_of(kind, o.meta()).as_deref(),
                },
            ),
            watcher::Event::Delete(o) => self.seen(&key(o), Seen::Deleted),
            watcher::Event::InitDone => true,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use proptest::prelude::*;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("Service", "ns", name)
    }

    fn present(rv: &str) -> Seen<'_> {
        Seen::Present { version: Some(rv) }
    }

    #[test]
    fn our_own_write_coming_back_keeps_the_entry() {
        let c = AppliedCache::default();
        c.record_applied(key("a"), 7, Some("10".into()));
        c.seen(&key("a"), present("10"));
        assert!(c.applied(&key("a"), 7));
        assert!(!c.applied(&key("a"), 8), "other content is applied again");
    }

    #[test]
    fn only_events_that_differ_from_what_we_left_are_worth_a_reconcile() {
        let c = AppliedCache::default();
        assert!(c.seen(&key("new"), present("1")), "not ours yet");
        c.record_applied(key("a"), 7, Some("10".into()));
        assert!(!c.seen(&key("a"), present("10")), "our write coming back");
        assert!(c.seen(&key("a"), present("11")), "someone else's change");
        c.record_deleted(key("w"));
        assert!(!c.seen(&key("w"), Seen::Deleted));
        assert!(c.seen(&key("w"), present("3")), "re-created");
    }

    #[test]
    fn a_change_by_someone_else_or_a_deletion_forgets_it() {
        let c = AppliedCache::default();
        c.record_applied(key("a"), 7, Some("10".into()));
        c.seen(&key("a"), present("11"));
        assert!(!c.applied(&key("a"), 7), "edited behind our back");
        c.record_applied(key("a"), 7, Some("12".into()));
        c.seen(&key("a"), Seen::Deleted);
        assert!(!c.applied(&key("a"), 7), "deleted behind our back");
    }

    #[test]
    fn a_deleted_object_that_comes_back_is_deleted_again() {
        let c = AppliedCache::default();
        c.record_deleted(key("w"));
        c.seen(&key("w"), Seen::Deleted);
        assert!(c.deleted(&key("w")), "our own deletion");
        c.seen(&key("w"), present("20"));
        assert!(!c.deleted(&key("w")), "re-created");
    }

    #[test]
    fn a_relist_forgets_that_kind_only() {
        let c = AppliedCache::default();
        c.record_applied(key("a"), 1, Some("1".into()));
        c.record_applied(
            ObjectKey::new("StatefulSet", "ns", "a"),
            1,
            Some("1".into()),
        );
        c.watched::<Service>("Service", &watcher::Event::Init);
        assert!(!c.applied(&key("a"), 1));
        assert!(c.applied(&ObjectKey::new("StatefulSet", "ns", "a"), 1));
    }

    #[test]
    fn watch_events_are_keyed_by_kind_namespace_and_name() {
        let c = AppliedCache::default();
        c.record_applied(key("a"), 1, Some("5".into()));
        let mut s = Service::default();
        s.metadata.name = Some("a".into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.resource_version = Some("5".into());
        c.watched("Service", &watcher::Event::Apply(s.clone()));
        assert!(c.applied(&key("a"), 1));
        s.metadata.namespace = Some("other".into());
        s.metadata.resource_version = Some("6".into());
        c.watched("Service", &watcher::Event::Apply(s.clone()));
        assert!(c.applied(&key("a"), 1), "another namespace's object");
        c.watched("Service", &watcher::Event::Delete(s));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_status_update_is_not_a_change_of_what_we_wrote() {
        use k8s_openapi::api::apps::v1::StatefulSet;
        let c = AppliedCache::default();
        let mut sts = StatefulSet::default();
        sts.metadata.name = Some("g".into());
        sts.metadata.namespace = Some("ns".into());
        sts.metadata.generation = Some(3);
        sts.metadata.resource_version = Some("100".into());
        let key = ObjectKey::new(StatefulSet::KIND, "ns", "g");
        c.record_applied(key.clone(), 1, version_of(StatefulSet::KIND, &sts.metadata));
        // The StatefulSet controller writes the status: a new resourceVersion, same generation.
        sts.metadata.resource_version = Some("101".into());
        c.watched(StatefulSet::KIND, &watcher::Event::Apply(sts.clone()));
        assert!(c.applied(&key, 1));
        // Someone edits a label: applied again.
        sts.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
        c.watched(StatefulSet::KIND, &watcher::Event::Apply(sts));
        assert!(!c.applied(&key, 1));
        // A Service has no status subresource: any new resourceVersion is a change.
        let mut svc = Service::default();
        svc.metadata.resource_version = Some("7".into());
        svc.metadata.generation = Some(1);
        let v7 = version_of(Service::KIND, &svc.metadata);
        svc.metadata.resource_version = Some("8".into());
        assert_ne!(v7, version_of(Service::KIND, &svc.metadata));
    }

    proptest! {
        /// Whatever the watch shows, an entry survives only while the object is exactly as we
        /// left it.
        #[test]
        fn an_entry_survives_only_events_that_match_our_write(
            events in proptest::collection::vec((any::<bool>(), 0u8..4), 0..8)
        ) {
            let c = AppliedCache::default();
            c.record_applied(key("a"), 1, Some("0".into()));
            let mut matching = true;
            for (deleted, rv) in events {
                let rv = rv.to_string();
                if deleted {
                    c.seen(&key("a"), Seen::Deleted);
                    matching = false;
                } else {
                    c.seen(&key("a"), present(&rv));
                    matching &= rv == "0";
                }
                prop_assert_eq!(c.applied(&key("a"), 1), matching);
            }
        }
    }
}
