//! The supervisor's configuration: the group's hooks and exec health check, passed by the
//! operator as JSON in the `QUORATE_HOOKS` environment variable of the workload's containers.

use serde::{Deserialize, Serialize};

use super::core::Declared;
use crate::api::{ExecCheck, HookKind, HooksSpec, ReplicaGroupSpec};

/// The environment variable with [`SupervisorConfig`] as JSON.
pub const HOOKS_ENV: &str = "QUORATE_HOOKS";
/// The agent's loopback HTTP address (set by the operator on every workload container).
pub const AGENT_URL_ENV: &str = "QUORATE_AGENT_URL";
/// The member (pod) name.
pub const MEMBER_ENV: &str = "QUORATE_MEMBER";

/// How often the position hook runs when nobody asks for a fresh one.
pub const POSITION_PERIOD_MILLIS: u64 = 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorConfig {
    #[serde(default)]
    pub hooks: HooksSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ExecHealth>,
}

/// `spec.health.exec` with its period, timeout and threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecHealth {
    pub command: Vec<String>,
    pub period_millis: u64,
    pub timeout_millis: u64,
    pub failure_threshold: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{HOOKS_ENV} is not valid JSON for the supervisor: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{HOOKS_ENV}: hooks.{0}.command must name a program")]
    EmptyCommand(&'static str),
}

impl SupervisorConfig {
    /// What the operator passes for `spec` (None: the group declares no hooks).
    pub fn for_spec(spec: &ReplicaGroupSpec) -> Option<Self> {
        let hooks = spec.hooks.clone()?;
        let health = spec.health.as_ref().and_then(|h| {
            h.exec.as_ref().map(|e: &ExecCheck| ExecHealth {
                command: e.command.clone(),
                period_millis: h.period_millis.max(1) as u64,
                timeout_millis: h.timeout_millis.max(1) as u64,
                failure_threshold: h.failure_threshold.max(1) as u32,
            })
        });
        Some(Self { hooks, health })
    }

    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_str(json).map_err(ConfigError::Json)?;
        for kind in [
            HookKind::Promote,
            HookKind::Demote,
            HookKind::Join,
            HookKind::Position,
            HookKind::Health,
        ] {
            if config
                .command(kind)
                .is_some_and(|c| c.first().is_none_or(|p| p.is_empty()))
            {
                return Err(ConfigError::EmptyCommand(kind.as_str()));
            }
        }
        Ok(config)
    }

    pub fn command(&self, kind: HookKind) -> Option<&[String]> {
        let hook = match kind {
            HookKind::Promote => self.hooks.promote.as_ref(),
            HookKind::Demote => self.hooks.demote.as_ref(),
            HookKind::Join => self.hooks.join.as_ref(),
            HookKind::Position => self.hooks.position.as_ref(),
            HookKind::Health => return self.health.as_ref().map(|h| h.command.as_slice()),
        };
        hook.map(|h| h.command.as_slice())
    }

    pub fn timeout_millis(&self, kind: HookKind) -> u64 {
        let declared = match kind {
            HookKind::Promote => self.hooks.promote.as_ref().and_then(|h| h.timeout_millis),
            HookKind::Demote => self.hooks.demote.as_ref().and_then(|h| h.timeout_millis),
            HookKind::Join => self.hooks.join.as_ref().and_then(|h| h.timeout_millis),
            HookKind::Position => self.hooks.position.as_ref().and_then(|h| h.timeout_millis),
            HookKind::Health => self.health.as_ref().map(|h| h.timeout_millis as i32),
        };
        declared
            .unwrap_or_else(|| kind.default_timeout_millis())
            .max(1) as u64
    }

    pub fn declared(&self) -> Declared {
        Declared {
            join: self.hooks.join.is_some(),
            promote: self.hooks.promote.is_some(),
            demote: self.hooks.demote.is_some(),
            position: self.hooks.position.is_some(),
            health: self.health.is_some(),
            fence: self.hooks.fence,
            health_period_millis: self.health.as_ref().map_or(1000, |h| h.period_millis),
            health_failure_threshold: self.health.as_ref().map_or(1, |h| h.failure_threshold),
            position_period_millis: POSITION_PERIOD_MILLIS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_and_empty_commands_are_refused() {
        let json = r#"{"hooks":{"promote":{"command":["redis-cli","replicaof","no","one"]},"fence":"Kill"},
            "health":{"command":["redis-cli","ping"],"periodMillis":500,"timeoutMillis":300,"failureThreshold":3}}"#;
        let c = SupervisorConfig::parse(json).expect("valid");
        assert_eq!(c.timeout_millis(HookKind::Promote), 10_000);
        assert_eq!(c.timeout_millis(HookKind::Health), 300);
        assert_eq!(c.declared().fence, crate::api::FenceMode::Kill);
        assert!(c.declared().promote && !c.declared().demote && c.declared().health);
        let empty = r#"{"hooks":{"demote":{"command":[""]}}}"#;
        assert!(matches!(
            SupervisorConfig::parse(empty),
            Err(ConfigError::EmptyCommand("demote"))
        ));
        assert!(matches!(
            SupervisorConfig::parse("{"),
            Err(ConfigError::Json(_))
        ));
    }
}
