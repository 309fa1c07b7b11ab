//! Who may call which RPC (pure). The group CA proves a caller belongs to this group (the TLS
//! handshake refuses any other certificate); the identity in its certificate
//! ([`crate::pki::Identity`]) says whether it is a member or the operator:
//! - Raft, reports and demotions come only from members;
//! - everything that changes the group (bootstrap, membership, switchover, pause, resume,
//!   fence, touch) and fault injection comes only from the operator;
//! - `Status` and `Watch` (read-only) from either.
//!
//! Without TLS (tests and local experiments only; the operator always configures it) there is
//! no identity and nothing is refused: the documented trade-off of `--tls-*` being optional.

use crate::pki::Identity;

/// Every RPC the agent serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Status,
    Watch,
    Bootstrap,
    AddMember,
    RemoveMember,
    Switchover,
    Pause,
    Resume,
    Fence,
    Touch,
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
    Report,
    Demote,
    InjectFault,
}

/// Who an RPC is meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Operator,
    Members,
    OperatorAndMembers,
}

impl Rpc {
    pub const ALL: [Rpc; 17] = [
        Rpc::Status,
        Rpc::Watch,
        Rpc::Bootstrap,
        Rpc::AddMember,
        Rpc::RemoveMember,
        Rpc::Switchover,
        Rpc::Pause,
        Rpc::Resume,
        Rpc::Fence,
        Rpc::Touch,
        Rpc::AppendEntries,
        Rpc::Vote,
        Rpc::PreVote,
        Rpc::InstallSnapshot,
        Rpc::Report,
        Rpc::Demote,
        Rpc::InjectFault,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Status => "Status",
            Rpc::Watch => "Watch",
            Rpc::Bootstrap => "Bootstrap",
            Rpc::AddMember => "AddMember",
            Rpc::RemoveMember => "RemoveMember",
            Rpc::Switchover => "Switchover",
            Rpc::Pause => "Pause",
            Rpc::Resume => "Resume",
            Rpc::Fence => "Fence",
            Rpc::Touch => "Touch",
            Rpc::AppendEntries => "AppendEntries",
            Rpc::Vote => "Vote",
            Rpc::PreVote => "PreVote",
            Rpc::InstallSnapshot => "InstallSnapshot",
            Rpc::Report => "Report",
            Rpc::Demote => "Demote",
            Rpc::InjectFault => "InjectFault",
        }
    }

    pub fn audience(self) -> Audience {
        match self {
            Rpc::Status | Rpc::Watch => Audience::OperatorAndMembers,
            Rpc::Bootstrap
            | Rpc::AddMember
            | Rpc::RemoveMember
            | Rpc::Switchover
            | Rpc::Pause
            | Rpc::Resume
            | Rpc::Fence
            | Rpc::Touch
            | Rpc::InjectFault => Audience::Operator,
            Rpc::AppendEntries
            | Rpc::Vote
            | Rpc::PreVote
            | Rpc::InstallSnapshot
            | Rpc::Report
            | Rpc::Demote => Audience::Members,
        }
    }
}

/// The caller of one RPC, as the transport knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The server runs without TLS: nobody is identified.
    Plaintext,
    /// A certificate of this group's CA that speaks for nobody (or none reached the handler).
    Unidentified,
    Identified(Identity),
}

impl Caller {
    /// The caller presenting `certs` (leaf first) to a server that runs TLS or not.
    pub fn from_certificates(
        tls: bool,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Self {
        if !tls {
            return Caller::Plaintext;
        }
        certs
            .and_then(|c| c.first())
            .and_then(|leaf| Identity::of_certificate(leaf))
            .map_or(Caller::Unidentified, Caller::Identified)
    }

    /// The label of refusals in metrics (bounded: no member names).
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Plaintext => "plaintext",
            Caller::Unidentified => "unidentified",
            Caller::Identified(Identity::Operator) => "operator",
            Caller::Identified(Identity::Member(_)) => "member",
        }
    }
}

/// Why an RPC was refused: the message of the `PermissionDenied` status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{rpc} is allowed only for {allowed}; the caller's certificate speaks for {caller}")]
pub struct Refusal {
    pub rpc: &'static str,
    pub allowed: &'static str,
    pub caller: String,
}

pub fn authorize(rpc: Rpc, caller: &Caller) -> Result<(), Refusal> {
    let identity = match caller {
        Caller::Plaintext => return Ok(()),
        Caller::Unidentified => None,
        Caller::Identified(identity) => Some(identity),
    };
    let (allowed, ok) = match rpc.audience() {
        Audience::Operator => ("the operator", matches!(identity, Some(Identity::Operator))),
        Audience::Members => (
            "members of the group",
            matches!(identity, Some(Identity::Member(_))),
        ),
        Audience::OperatorAndMembers => {
            ("the operator and members of the group", identity.is_some())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal {
            rpc: rpc.name(),
            allowed,
            caller: identity.map_or_else(
                || "nobody (no quorate identity in it)".to_owned(),
                ToString::to_string,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> Vec<Caller> {
        vec![
            Caller::Unidentified,
            Caller::Identified(Identity::Operator),
            Caller::Identified(Identity::Member("cache-1".into())),
        ]
    }

    #[test]
    fn the_table_of_who_may_call_what() {
        let mut table = String::new();
        for rpc in Rpc::ALL {
            let row: Vec<String> = callers()
                .iter()
                .map(|c| {
                    format!(
                        "{}={}",
                        c.kind(),
                        if authorize(rpc, c).is_ok() {
                            "yes"
                        } else {
                            "no"
                        }
                    )
                })
                .collect();
            table.push_str(&format!("{:<16}{}\n", rpc.name(), row.join(" ")));
        }
        insta::assert_snapshot!(table);
    }

    #[test]
    fn without_tls_nothing_is_refused_and_refusals_name_both_sides() {
        for rpc in Rpc::ALL {
            assert_eq!(authorize(rpc, &Caller::Plaintext), Ok(()));
        }
        let refused = authorize(
            Rpc::Bootstrap,
            &Caller::Identified(Identity::Member("cache-1".into())),
        );
        assert_eq!(
            refused.map_err(|r| r.to_string()),
            Err(
                "Bootstrap is allowed only for the operator; the caller's certificate speaks for member cache-1"
                    .to_owned()
            )
        );
        let refused = authorize(Rpc::AppendEntries, &Caller::Unidentified);
        assert!(
            refused
                .map_err(|r| r.to_string())
                .is_err_and(|m| m.contains("members of the group") && m.contains("nobody"))
        );
    }

    #[test]
    fn only_tls_callers_with_an_identity_are_identified() {
        assert_eq!(Caller::from_certificates(false, None), Caller::Plaintext);
        assert_eq!(Caller::from_certificates(true, None), Caller::Unidentified);
        assert_eq!(
            Caller::from_certificates(
                true,
                Some(&[rustls_pki_types::CertificateDer::from(vec![1, 2, 3])])
            ),
            Caller::Unidentified
        );
    }
}
