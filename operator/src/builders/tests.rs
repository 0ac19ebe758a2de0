//! Tests of the built objects.

use super::*;
use crate::testing::sample_job;

fn settings() -> Settings {
    Settings {
        worker_image: "ghcr.io/weir-dev/weir-worker:test".to_owned(),
    }
}

fn env_value(sts: &StatefulSet, name: &str) -> Option<String> {
    let container = &sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.value.clone())
}

#[test]
fn statefulset_is_parallel_on_delete_and_restricted() {
    let job = sample_job();
    let sts = stateful_set(&job, &settings(), &Rollout::initial(&job)).unwrap();
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    assert_eq!(spec.replicas, Some(job.spec.parallelism));
    let pod = spec.template.spec.as_ref().unwrap();
    let sc = pod.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    for (path, read_only) in [(STATE_DIR, false), ("/tmp", false), (JOB_DIR, true)] {
        let m = mounts.iter().find(|m| m.mount_path == path).unwrap();
        assert_eq!(m.read_only, Some(read_only), "{path}");
    }
    assert_eq!(env_value(&sts, "WEIR_PARALLELISM").as_deref(), Some("2"));
    assert_eq!(env_value(&sts, "WEIR_GENERATION").as_deref(), Some("1"));
    assert_eq!(
        env_value(&sts, "WEIR_HTTP_ADDR").as_deref(),
        Some("0.0.0.0:9400")
    );
}

#[test]
fn state_volume_is_a_claim_template_or_an_empty_dir() {
    let mut job = sample_job();
    job.spec.state.volume = None;
    let sts = stateful_set(&job, &settings(), &Rollout::initial(&job)).unwrap();
    let spec = sts.spec.unwrap();
    assert!(spec.volume_claim_templates.is_none());
    let vols = spec.template.spec.unwrap().volumes.unwrap();
    assert!(
        vols.iter()
            .any(|v| v.name == "state" && v.empty_dir.is_some())
    );

    job.spec.state.volume = Some(weir_crds::job::StateVolume {
        size: k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".into()),
        storage_class_name: Some("fast".into()),
    });
    let spec = stateful_set(&job, &settings(), &Rollout::initial(&job))
        .unwrap()
        .spec
        .unwrap();
    let claims = spec.volume_claim_templates.unwrap();
    assert_eq!(claims[0].metadata.name.as_deref(), Some("state"));
    let vols = spec.template.spec.unwrap().volumes.unwrap();
    assert!(!vols.iter().any(|v| v.name == "state"));
}

#[test]
fn suspended_job_has_no_replicas_and_reserved_env_cannot_be_overridden() {
    let mut job = sample_job();
    job.spec.suspend = true;
    job.spec.pod_template = Some(weir_crds::job::PodOverrides {
        env: vec![env("WEIR_PARALLELISM", "99"), env("EXTRA", "1")],
        ..Default::default()
    });
    let sts = stateful_set(&job, &settings(), &Rollout::initial(&job)).unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(env_value(&sts, "WEIR_PARALLELISM").as_deref(), Some("2"));
    assert_eq!(env_value(&sts, "EXTRA").as_deref(), Some("1"));
}

#[test]
fn a_rollout_sets_the_workers_and_is_read_back_from_the_statefulset() {
    let mut job = sample_job();
    let initial = Rollout::initial(&job);
    assert_eq!(
        initial,
        Rollout {
            replicas: 2,
            parallelism: 2,
            generation: 1,
            restore_from: "latest".into()
        }
    );
    job.spec.restore_from = Some("sp-1".into());
    job.spec.suspend = true;
    job.status = Some(weir_crds::StreamingJobStatus {
        worker_generation: Some(4),
        ..Default::default()
    });
    let initial = Rollout::initial(&job);
    assert_eq!((initial.replicas, initial.generation), (0, 4));
    assert_eq!(initial.restore_from, "sp-1");

    let rollout = Rollout {
        replicas: 0,
        parallelism: 5,
        generation: 7,
        restore_from: "rescale-7".into(),
    };
    let sts = stateful_set(&job, &settings(), &rollout).unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(env_value(&sts, "WEIR_PARALLELISM").as_deref(), Some("5"));
    assert_eq!(env_value(&sts, "WEIR_GENERATION").as_deref(), Some("7"));
    assert_eq!(
        env_value(&sts, "WEIR_RESTORE_FROM").as_deref(),
        Some("rescale-7")
    );
    assert_eq!(Rollout::of(&sts), Some(rollout));
    assert_eq!(Rollout::of(&StatefulSet::default()), None);
}

#[test]
fn the_pdb_lets_one_worker_go_and_never_blocks_on_unhealthy_ones() {
    let spec = pdb(&sample_job()).unwrap().spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
}

#[test]
fn every_child_is_owned_and_labelled() {
    let job = sample_job();
    let c = children(&job, &settings(), &Rollout::initial(&job), "t0ken").unwrap();
    let metas = [
        &c.config_map.metadata,
        &c.service.metadata,
        &c.stateful_set.metadata,
        &c.control_secret.metadata,
        &c.pdb.metadata,
    ];
    for meta in metas {
        assert_eq!(meta.labels.as_ref().unwrap(), &labels("clicks"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "StreamingJob");
        assert_eq!(owner.controller, Some(true));
    }
    assert_eq!(
        selector_string("clicks"),
        "app.kubernetes.io/instance=clicks,app.kubernetes.io/name=weir-worker"
    );
}

#[test]
fn a_job_file_change_changes_the_pod_template() {
    assert_eq!(job_file_hash(""), "cbf29ce484222325");
    assert_eq!(job_file_hash("a"), "af63dc4c8601ec8c");
    let job = sample_job();
    let annotation = |job: &StreamingJob| {
        let sts = stateful_set(job, &settings(), &Rollout::initial(job)).unwrap();
        let template = sts.spec.unwrap().template.metadata.unwrap();
        template.annotations.unwrap()[JOB_HASH_ANNOTATION].clone()
    };
    let mut changed = job.clone();
    changed.spec.sink.topic = "elsewhere".into();
    assert_ne!(annotation(&job), annotation(&changed));
    let mut same = job.clone();
    same.status = Some(Default::default());
    assert_eq!(annotation(&job), annotation(&same));
    // Fields only the operator acts on restart nothing.
    same.spec.parallelism = 7;
    same.spec.suspend = true;
    same.spec.savepoint_trigger_nonce = Some(3);
    same.spec.restart_nonce = Some(4);
    same.spec.restore_from = Some("sp-1".into());
    same.spec.savepoint.history_limit = 3;
    same.spec.autoscaler = Some(Default::default());
    assert_eq!(annotation(&job), annotation(&same));
    let mut timeout = job.clone();
    timeout.spec.savepoint.timeout = weir_crds::duration::Duration::from_secs(1);
    assert_ne!(annotation(&job), annotation(&timeout), "workers read it");
}

#[test]
fn workers_get_default_resources_unless_the_job_sets_some() {
    let resources = |job: &StreamingJob| {
        let sts = stateful_set(job, &settings(), &Rollout::initial(job)).unwrap();
        let pod = sts.spec.unwrap().template.spec.unwrap();
        pod.containers[0].resources.clone().unwrap()
    };
    let mut job = sample_job();
    let defaults = resources(&job);
    let requests = defaults.requests.unwrap();
    assert_eq!(requests["cpu"], Quantity("1".into()));
    assert_eq!(requests["memory"], Quantity("2Gi".into()));
    let limits = defaults.limits.unwrap();
    assert_eq!(limits["memory"], Quantity("2Gi".into()));
    assert!(!limits.contains_key("cpu"), "no CPU throttling");
    let own = ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "cpu".to_owned(),
            Quantity("250m".into()),
        )])),
        ..ResourceRequirements::default()
    };
    job.spec.resources = Some(own.clone());
    assert_eq!(resources(&job), own, "the job's own resources win");
}

#[test]
fn missing_uid_is_an_error() {
    let mut job = sample_job();
    job.metadata.uid = None;
    assert!(matches!(
        config_map(&job),
        Err(BuildError::MissingMetadata("uid"))
    ));
}
