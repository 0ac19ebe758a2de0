//! Every permission the operator uses, in one place. The chart's ClusterRole
//! and Role must grant exactly these (a test compares them).

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One RBAC rule: the verbs allowed on some resources of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group ("" for the core group).
    pub api_group: &'static str,
    /// Resources (and subresources such as `streamingjobs/status`).
    pub resources: &'static [&'static str],
    /// Names the rule is limited to; empty: every object of the resources.
    pub resource_names: &'static [&'static str],
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// Verbs of an owned child: read and watch it (`get`, `list`, `watch`) and
/// server-side apply it, which the API server authorizes as `patch` and, when
/// the object does not exist yet, as `create`.
const CHILD_VERBS: &[&str] = &["create", "get", "list", "patch", "watch"];

/// Cluster-wide rules (the operator watches jobs in every namespace).
pub const CLUSTER_RULES: &[Rule] = &[
    // The controller lists and watches jobs; the finalizer is added and
    // removed with JSON patches.
    Rule {
        api_group: "weir.dev",
        resources: &["streamingjobs"],
        resource_names: &[],
        verbs: &["list", "patch", "watch"],
    },
    // Status is server-side applied.
    Rule {
        api_group: "weir.dev",
        resources: &["streamingjobs/status"],
        resource_names: &[],
        verbs: &["patch"],
    },
    // The autoscaler writes the parallelism it decides through the scale
    // subresource (server-side apply, field manager weir-autoscaler).
    Rule {
        api_group: "weir.dev",
        resources: &["streamingjobs/scale"],
        resource_names: &[],
        verbs: &["patch"],
    },
    // Children carry owner references with blockOwnerDeletion, which the
    // OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift
    // and many hardened clusters) allows only to whoever may update the
    // owner's finalizers.
    Rule {
        api_group: "weir.dev",
        resources: &["streamingjobs/finalizers"],
        resource_names: &[],
        verbs: &["update"],
    },
    Rule {
        api_group: "",
        resources: &["configmaps", "services"],
        resource_names: &[],
        verbs: CHILD_VERBS,
    },
    // The control Secret is read (to keep its token) and applied; the Secrets
    // the spec names are read to check that they exist (and the checkpoint
    // credentials to dispose of the storage). Secrets are never listed or
    // watched: the operator has no view of other Secrets.
    Rule {
        api_group: "",
        resources: &["secrets"],
        resource_names: &[],
        verbs: &["create", "get", "patch"],
    },
    // Worker pods are listed for the status, and deleted to restart workers
    // on a new pod template (the StatefulSet's updateStrategy is OnDelete).
    Rule {
        api_group: "",
        resources: &["pods"],
        resource_names: &[],
        verbs: &["delete", "list"],
    },
    // A deleted job's namespace is read: disposal is abandoned when the
    // namespace is being deleted. Under a RoleBinding (watchNamespaces) this
    // still works: a namespace's own RoleBindings cover reading it.
    Rule {
        api_group: "",
        resources: &["namespaces"],
        resource_names: &[],
        verbs: &["get"],
    },
    Rule {
        api_group: "apps",
        resources: &["statefulsets"],
        resource_names: &[],
        verbs: CHILD_VERBS,
    },
    Rule {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        resource_names: &[],
        verbs: CHILD_VERBS,
    },
    // kube's event Recorder creates events and patches them into series.
    Rule {
        api_group: "events.k8s.io",
        resources: &["events"],
        resource_names: &[],
        verbs: &["create", "patch"],
    },
];

/// Name of the leader-election Lease unless configured otherwise (the
/// chart's `leaderElection.leaseName`).
pub const DEFAULT_LEASE_NAME: &str = "weir-operator";

/// Rules in the operator's own namespace: the leader-election Lease. Reading
/// and renewing are limited to the Lease's name; creating cannot be (the API
/// server authorizes a create before the object has a name to match).
pub const NAMESPACE_RULES: &[Rule] = &[
    Rule {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        resource_names: &[],
        verbs: &["create"],
    },
    Rule {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        resource_names: &[DEFAULT_LEASE_NAME],
        verbs: &["get", "update"],
    },
];

/// The rules as Kubernetes PolicyRules, as a ClusterRole or Role holds them.
pub fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|rule| PolicyRule {
            api_groups: Some(vec![rule.api_group.to_owned()]),
            resources: Some(rule.resources.iter().map(|r| (*r).to_owned()).collect()),
            resource_names: (!rule.resource_names.is_empty()).then(|| {
                rule.resource_names
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect()
            }),
            verbs: rule.verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `rules:` list of a chart template, without template directives;
    /// the Lease name renders as its default.
    fn template_rules(file: &str) -> Vec<PolicyRule> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/weir-operator/templates/"
        )
        .to_owned()
            + file;
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (_, rules) = text
            .split_once("\nrules:\n")
            .unwrap_or_else(|| panic!("{path} has no rules"));
        let rules: String = rules
            .lines()
            .filter(|line| !line.trim_start().starts_with("{{"))
            .map(|line| {
                let line = line.replace(
                    r#"{{ include "weir-operator.leaseName" . | quote }}"#,
                    &format!("{DEFAULT_LEASE_NAME:?}"),
                );
                format!("{line}\n")
            })
            .collect();
        serde_yaml::from_str(&rules).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn chart_cluster_role_grants_exactly_the_cluster_rules() {
        assert_eq!(
            template_rules("clusterrole.yaml"),
            policy_rules(CLUSTER_RULES)
        );
    }

    #[test]
    fn chart_role_grants_exactly_the_namespace_rules() {
        assert_eq!(template_rules("role.yaml"), policy_rules(NAMESPACE_RULES));
    }

    #[test]
    fn the_chart_and_the_operator_default_to_the_same_lease() {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/weir-operator/");
        let helpers = std::fs::read_to_string(format!("{chart}templates/_helpers.tpl")).unwrap();
        assert!(
            helpers.contains(&format!("| default {DEFAULT_LEASE_NAME:?}")),
            "{helpers}"
        );
        let values = std::fs::read_to_string(format!("{chart}values.yaml")).unwrap();
        assert!(
            values.contains(&format!("leaseName: {DEFAULT_LEASE_NAME}\n")),
            "{values}"
        );
    }

    #[test]
    fn verbs_are_sorted_and_unique() {
        for rule in CLUSTER_RULES.iter().chain(NAMESPACE_RULES) {
            let mut sorted = rule.verbs.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted, rule.verbs, "{rule:?}");
        }
    }
}
