//! Per-group certificates. Two Secrets:
//! - `NAME-ca` (never mounted in pods): the group CA and the operator's client certificate;
//! - `NAME-agent-tls` (mounted into every agent): the CA certificate and the members' shared
//!   certificate, valid for `*.NAME-peers.NS.svc.cluster.local` (and shorter forms).
//!
//! The member certificate is re-issued 30 days before it expires (or when the CA changes); its
//! hash is on the pod template, so new certificates roll the members one at a time. Both are
//! read by name only (no Secret watch: see [`TlsCache`]).
//!
//! The CA is made once, with the group. A `NAME-ca` that is gone (or unusable) while
//! `NAME-agent-tls` exists is an incident, not a reason for a new CA: the running members trust
//! the old one and would refuse every peer and the operator holding certificates of a new one.
//! The group reports `Degraded`/`CaLost` with the recovery steps and the operator goes on with
//! what it read before. Deleting `NAME-agent-tls` as well is how a user asks for a new CA.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};

use super::{Error, KubeContext};
use crate::agent::client::TlsClientConfig;
use crate::api::ReplicaGroup;
use crate::api::names::{
    CA_HASH_ANNOTATION, FIELD_MANAGER, GROUP_LABEL, GroupNames, MANAGED_BY, MANAGED_BY_LABEL,
};
use crate::pki::{self, GroupCa, Validity};

const CA_DAYS: i32 = 3650;
const MEMBER_DAYS: i32 = 365;
const RENEW_BEFORE_DAYS: i32 = 30;
const NOT_AFTER_ANNOTATION: &str = "quorate.dev/not-after";

#[derive(Clone)]
pub struct GroupTls {
    pub client: TlsClientConfig,
    /// Changes when the members' certificate or the CA changes.
    pub hash: String,
    /// Changes when the CA changes.
    pub ca_hash: String,
    /// Set when the CA's Secret was found lost after this was read: why, and what to do.
    pub ca_lost: Option<String>,
    /// When the members' certificate expires, Unix seconds (for the expiry alert).
    pub member_expiry: i64,
}

fn hash_of(parts: &[&str]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn today() -> jiff::civil::Date {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

fn tls_error(what: &str) -> impl Fn(pki::PkiError) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

fn secret(
    group: &ReplicaGroup,
    names: &GroupNames,
    name: String,
    type_: &str,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut s = Secret {
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    s.metadata.name = Some(name);
    s.metadata.namespace = Some(names.namespace.clone());
    s.metadata.labels = Some(BTreeMap::from([
        (GROUP_LABEL.to_owned(), names.name.clone()),
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
    ]));
    s.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    s.metadata.owner_references = group.controller_owner_ref(&()).map(|r| vec![r]);
    s
}

async fn apply(api: &Api<Secret>, s: &Secret) -> Result<(), Error> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(s).map_err(|e| Error::Tls(e.to_string()))?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .context(|| format!("applying Secret {name}"))?;
    Ok(())
}

/// The groups' TLS material as last read or written, so that a reconcile (on the failover path
/// too) mostly spends no API call on certificates that rarely change. An entry is used until
/// the member certificate is due for renewal, or for `reread` at most: the operator does not
/// watch Secrets (that would need list and watch on every Secret of the cluster), it reads the
/// group's two Secrets by name, so a Secret someone else changed or deleted is noticed within
/// that time (by default two reads per group per half hour: 1000 groups cost ~1 read a second).
pub struct TlsCache {
    entries: std::sync::Mutex<std::collections::HashMap<TlsKey, Entry>>,
    reread: std::time::Duration,
}

/// (namespace, group name, group uid).
type TlsKey = (String, String, String);

/// What was read or written, the renewal day, and when it was read.
type Entry = (GroupTls, jiff::civil::Date, std::time::Instant);

impl TlsCache {
    pub fn new(reread: std::time::Duration) -> Self {
        Self {
            entries: Default::default(),
            reread,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<TlsKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn get(
        &self,
        client: &Client,
        group: &ReplicaGroup,
        names: &GroupNames,
    ) -> Result<GroupTls, Error> {
        let key = (
            names.namespace.clone(),
            names.name.clone(),
            group.metadata.uid.clone().unwrap_or_default(),
        );
        if let Some((tls, renew_on, read_at)) = self.lock().get(&key)
            && today() < *renew_on
            && read_at.elapsed() < self.reread
        {
            return Ok(tls.clone());
        }
        match ensure(client, group, names).await {
            Ok((tls, renew_on)) => {
                self.lock()
                    .insert(key, (tls.clone(), renew_on, std::time::Instant::now()));
                Ok(tls)
            }
            // The members run on, and routing must follow them: go on with what was read
            // before, and say what was lost. After a restart the operator has nothing to go on.
            Err(Error::CaLost(why)) => match self.lock().get_mut(&key) {
                Some((tls, _, read_at)) => {
                    tls.ca_lost = Some(why);
                    *read_at = std::time::Instant::now();
                    Ok(tls.clone())
                }
                None => Err(Error::CaLost(why)),
            },
            Err(e) => Err(e),
        }
    }
}

/// A Secret under one of the group's names that is not the group's is never overwritten (that
/// would take a user's Secret over, and the group's deletion would then delete it).
fn refuse_foreign(found: Option<&Secret>, group: &ReplicaGroup) -> Result<(), Error> {
    match found {
        Some(s) if !super::observe::owned_by(&s.metadata, group) => {
            Err(Error::NameConflict(crate::plan::NameConflict {
                kind: "Secret".into(),
                name: s.metadata.name.clone().unwrap_or_default(),
                owner: super::observe::owner_of(&s.metadata),
            }))
        }
        _ => Ok(()),
    }
}

/// Makes sure both Secrets exist and are current; returns the operator's client configuration
/// and the day the member certificate is due for renewal.
pub async fn ensure(
    client: &Client,
    group: &ReplicaGroup,
    names: &GroupNames,
) -> Result<(GroupTls, jiff::civil::Date), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let today = today();

    let ca_secret = api
        .get_opt(&names.ca_secret())
        .await
        .context(|| format!("reading Secret {}", names.ca_secret()))?;
    refuse_foreign(ca_secret.as_ref(), group)?;
    let agent_secret = api
        .get_opt(&names.agent_tls_secret())
        .await
        .context(|| format!("reading Secret {}", names.agent_tls_secret()))?;
    refuse_foreign(agent_secret.as_ref(), group)?;
    let existing_ca = ca_secret.as_ref().and_then(|s| {
        Some(GroupCa {
            common_name: format!("quorate {}/{}", names.namespace, names.name),
            cert_pem: text(s, "ca.crt")?,
            key_pem: text(s, "ca.key")?,
        })
    });
    if existing_ca.is_none() && agent_secret.is_some() {
        return Err(Error::CaLost(ca_lost_message(names, ca_secret.is_some())));
    }
    // The operator's certificate is kept while it speaks for the operator; one issued before
    // certificates carried identities (agents refuse it every admin RPC) is replaced.
    let existing_operator = ca_secret.as_ref().and_then(|s| {
        let cert = text(s, "operator.crt")?;
        let key = text(s, "operator.key")?;
        (pki::Identity::of_pem(&cert) == Some(pki::Identity::Operator)).then_some((cert, key))
    });
    let (ca, operator_cert, operator_key) = match (existing_ca, existing_operator) {
        (Some(ca), Some((cert, key))) => (ca, cert, key),
        (existing_ca, _) => {
            let ca = match existing_ca {
                Some(ca) => ca,
                None => pki::generate_group_ca(
                    &format!("quorate {}/{}", names.namespace, names.name),
                    &Validity::days_from(today, CA_DAYS).map_err(tls_error("CA validity"))?,
                )
                .map_err(tls_error("generating the group CA"))?,
            };
            let operator = pki::issue_client_certificate(
                &ca,
                "quorate-operator",
                Some(&pki::Identity::Operator),
                &Validity::days_from(today, CA_DAYS).map_err(tls_error("validity"))?,
            )
            .map_err(tls_error("issuing the operator certificate"))?;
            let data = BTreeMap::from([
                ("ca.crt".to_owned(), ca.cert_pem.clone()),
                ("ca.key".to_owned(), ca.key_pem.clone()),
                ("operator.crt".to_owned(), operator.cert_pem.clone()),
                ("operator.key".to_owned(), operator.key_pem.clone()),
            ]);
            apply(
                &api,
                &secret(
                    group,
                    names,
                    names.ca_secret(),
                    "Opaque",
                    data,
                    BTreeMap::new(),
                ),
            )
            .await?;
            (ca, operator.cert_pem, operator.key_pem)
        }
    };
    let ca_hash = hash_of(&[&ca.cert_pem]);
    let current = agent_secret.as_ref().and_then(|s| {
        let annotations = s.metadata.annotations.as_ref()?;
        let not_after: jiff::civil::Date = annotations.get(NOT_AFTER_ANNOTATION)?.parse().ok()?;
        let renew_on = renewal_day(not_after)?;
        let cert = text(s, "tls.crt")?;
        // Also re-issued when it speaks for no member (issued before identities).
        let fresh = annotations.get(CA_HASH_ANNOTATION) == Some(&ca_hash)
            && today < renew_on
            && matches!(pki::Identity::of_pem(&cert), Some(pki::Identity::Member(_)));
        fresh.then_some((cert, renew_on, not_after))
    });
    let (member_cert, renew_on, not_after) = match current {
        Some(found) => found,
        None => {
            let validity =
                Validity::days_from(today, MEMBER_DAYS).map_err(tls_error("validity"))?;
            let member = pki::issue_member_certificate(
                &ca,
                &format!("{}-member", names.name),
                &names.agent_dns_names(),
                &[],
                &validity,
            )
            .map_err(tls_error("issuing the member certificate"))?;
            let data = BTreeMap::from([
                ("ca.crt".to_owned(), ca.cert_pem.clone()),
                ("tls.crt".to_owned(), member.cert_pem.clone()),
                ("tls.key".to_owned(), member.key_pem.clone()),
            ]);
            let annotations = BTreeMap::from([
                (
                    NOT_AFTER_ANNOTATION.to_owned(),
                    validity.not_after.to_string(),
                ),
                (CA_HASH_ANNOTATION.to_owned(), ca_hash.clone()),
            ]);
            apply(
                &api,
                &secret(
                    group,
                    names,
                    names.agent_tls_secret(),
                    "kubernetes.io/tls",
                    data,
                    annotations,
                ),
            )
            .await?;
            let renew_on = renewal_day(validity.not_after)
                .ok_or_else(|| Error::Tls("the member certificate's renewal day".into()))?;
            (member.cert_pem, renew_on, validity.not_after)
        }
    };
    let client = TlsClientConfig::from_pem(&operator_cert, &operator_key, &ca.cert_pem)
        .map_err(|e| Error::Tls(format!("operator client configuration: {e}")))?;
    Ok((
        GroupTls {
            client,
            hash: hash_of(&[&ca.cert_pem, &member_cert]),
            ca_hash,
            ca_lost: None,
            member_expiry: unix_seconds(not_after),
        },
        renew_on,
    ))
}

/// Why the group's CA is lost, and the two ways out, for the group's status and Event.
pub fn ca_lost_message(names: &GroupNames, present: bool) -> String {
    let (ns, ca, members) = (
        &names.namespace,
        names.ca_secret(),
        names.agent_tls_secret(),
    );
    let what = if present {
        "has no usable ca.crt and ca.key"
    } else {
        "is missing"
    };
    format!(
        "Secret {ca} (the group CA) {what}, but the members still trust that CA: the operator does not make a new one they would refuse. \
         Restore {ca} from a backup (kubectl apply -n {ns} -f ...; the members keep running and the operator keeps routing meanwhile), \
         or replace the CA, which restarts every member at once: kubectl delete secret -n {ns} {members}"
    )
}

/// The start of `day` (UTC), which is when a certificate with that `not_after` day expires
/// (pki::Validity sets 00:00:00 UTC).
fn unix_seconds(day: jiff::civil::Date) -> i64 {
    day.to_zoned(jiff::tz::TimeZone::UTC)
        .map_or(0, |z| z.timestamp().as_second())
}

/// The member certificate is re-issued `RENEW_BEFORE_DAYS` before it expires.
fn renewal_day(not_after: jiff::civil::Date) -> Option<jiff::civil::Date> {
    not_after
        .checked_sub(jiff::Span::new().days(RENEW_BEFORE_DAYS))
        .ok()
}
