//! The operator's Kubernetes client can speak TLS: kube is built without a
//! rustls crypto provider unless a feature selects one, and then building an
//! https client panics at start-up in the cluster.

#[tokio::test]
async fn an_https_client_can_be_built() {
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    let client = kube::Client::try_from(config);
    assert!(client.is_ok(), "{:?}", client.err());
}
