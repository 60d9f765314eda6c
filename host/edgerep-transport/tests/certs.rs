//! Certificates: PEM round trips, node ids, the files a node reads, and refusals of mismatched parts.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use edgerep_transport::certs::{
    CA_CERT_FILE, CA_KEY_FILE, Ca, CertError, Identity, NODE_CERT_FILE, NODE_KEY_FILE, NodeCert,
    node_id_of, write_node_files,
};

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_pem_round_trip_issues_certificates_the_original_trusts() {
    let ca = Ca::generate("deployment").unwrap();
    let (cert_pem, key_pem) = ca.to_pem();
    assert!(
        cert_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{cert_pem}"
    );
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let loaded = Ca::from_pem(&cert_pem, &key_pem).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.to_pem(), (cert_pem, key_pem));

    // A node certificate from the loaded CA chains to the original CA certificate.
    let node = loaded.issue_node("site-z").unwrap();
    let identity = Identity::new(&ca, &node).unwrap();
    assert_eq!(identity.node_id().as_str(), "site-z");
}

#[test]
fn node_pem_round_trip_keeps_the_id_and_key() {
    let ca = Ca::generate("deployment").unwrap();
    let node = ca.issue_node("site-a").unwrap();
    let (cert_pem, key_pem) = node.to_pem();
    let loaded = NodeCert::from_pem(&cert_pem, &key_pem).unwrap();
    assert_eq!(loaded.node_id().as_str(), "site-a");
    assert_eq!(loaded.cert_der(), node.cert_der());
    assert_eq!(node_id_of(loaded.cert_der()).unwrap().as_str(), "site-a");
    let identity = Identity::from_pem(ca.cert_pem(), &cert_pem, &key_pem).unwrap();
    assert_eq!(identity.cert(), node.cert_der());
    assert_eq!(identity.ca_cert(), ca.cert_der());
}

#[test]
fn mismatched_parts_are_refused_with_reasons() {
    let ca = Ca::generate("ours").unwrap();
    let other = Ca::generate("theirs").unwrap();
    let a = ca.issue_node("site-a").unwrap();
    let b = ca.issue_node("site-b").unwrap();
    let (a_cert, a_key) = a.to_pem();
    let (_, b_key) = b.to_pem();

    let err = NodeCert::from_pem(&a_cert, &b_key).unwrap_err();
    assert!(
        err.to_string()
            .contains("the key is not the certificate's key"),
        "{err}"
    );
    let err = Identity::from_pem(ca.cert_pem(), &a_cert, &b_key).unwrap_err();
    assert!(matches!(err, CertError::Mismatch { .. }), "{err}");

    // A node certificate of another CA.
    let err = Identity::new(&other, &a).unwrap_err();
    assert!(err.to_string().contains("not issued by this CA"), "{err}");

    // A CA certificate with another CA's key; a node certificate offered as a CA.
    let (other_cert, other_key) = other.to_pem();
    let (_, ca_key) = ca.to_pem();
    let err = Ca::from_pem(&other_cert, &ca_key).unwrap_err();
    assert!(
        err.to_string()
            .contains("the key is not the certificate's key"),
        "{err}"
    );
    let err = Ca::from_pem(&a_cert, &a_key).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");

    // Not PEM at all; two certificates where one is expected.
    let err = NodeCert::from_pem("hello", &a_key).unwrap_err();
    assert!(err.to_string().starts_with("node certificate: "), "{err}");
    let two = format!("{a_cert}{a_cert}");
    let err = NodeCert::from_pem(&two, &a_key).unwrap_err();
    assert!(
        err.to_string().contains("more than one certificate"),
        "{err}"
    );
    let err = Ca::from_pem(&other_cert, "garbage").unwrap_err();
    assert!(err.to_string().starts_with("CA key: "), "{err}");
    // A CA certificate names no node.
    let err = NodeCert::from_pem(&other_cert, &other_key).unwrap_err();
    assert!(err.to_string().contains("no usable node id"), "{err}");
}

#[test]
fn node_files_are_written_with_a_private_key_file_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node-1");
    let ca = Ca::generate("deployment").unwrap();
    let node = ca.issue_node("node-1").unwrap();
    write_node_files(&node_dir, &ca, &node).unwrap();

    assert_eq!(
        fs::read_to_string(node_dir.join(CA_CERT_FILE)).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(mode(&node_dir.join(NODE_KEY_FILE)), 0o600);
    assert_eq!(mode(&node_dir.join(NODE_CERT_FILE)), 0o644);
    // No CA key in a node directory, and no temporary files left.
    let mut names: Vec<_> = fs::read_dir(&node_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [CA_CERT_FILE, NODE_KEY_FILE, NODE_CERT_FILE]);

    let identity = Identity::load(&node_dir).unwrap();
    assert_eq!(identity.node_id().as_str(), "node-1");
    assert_eq!(identity.cert(), node.cert_der());

    // Writing the same files again is fine; other contents are never overwritten.
    write_node_files(&node_dir, &ca, &node).unwrap();
    let other = ca.issue_node("node-1").unwrap();
    let err = write_node_files(&node_dir, &ca, &other).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
    assert!(err.to_string().contains(NODE_CERT_FILE), "{err}");
    assert_eq!(Identity::load(&node_dir).unwrap().cert(), node.cert_der());
    // A refusal writes none of the files: a directory holding another key only (a run cut
    // short) does not get a certificate without its key.
    let half = dir.path().join("half");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join(NODE_KEY_FILE), "another key").unwrap();
    let err = write_node_files(&half, &ca, &node).unwrap_err();
    assert!(err.to_string().contains(NODE_KEY_FILE), "{err}");
    assert!(!half.join(NODE_CERT_FILE).exists() && !half.join(CA_CERT_FILE).exists());
}

#[test]
fn missing_or_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Identity::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains(CA_CERT_FILE), "{err}");

    let ca = Ca::generate("deployment").unwrap();
    write_node_files(dir.path(), &ca, &ca.issue_node("n1").unwrap()).unwrap();
    fs::write(dir.path().join(NODE_KEY_FILE), "not a key").unwrap();
    let err = Identity::load(dir.path()).unwrap_err();
    let key_path = dir.path().join(NODE_KEY_FILE).display().to_string();
    assert!(err.to_string().starts_with(&key_path), "{err}");
}

#[test]
fn ca_files_round_trip_with_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("deployment").unwrap();
    ca.write_files(dir.path()).unwrap();
    assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
    let loaded = Ca::load(
        &dir.path().join(CA_CERT_FILE),
        &dir.path().join(CA_KEY_FILE),
    )
    .unwrap();
    assert_eq!(loaded.to_pem(), ca.to_pem());
    // The node files can share the directory: the CA certificate is the same file.
    write_node_files(dir.path(), &loaded, &loaded.issue_node("n1").unwrap()).unwrap();
    Identity::load(dir.path()).unwrap();
}

/// Certificates are valid from the Unix epoch: a node whose clock is behind (an edge box
/// without a battery-backed clock boots in the past) still loads its identity and accepts its
/// peers. They were valid from a day before they were made, and a node whose clock was further
/// behind refused to start ("not valid now"). Expiry still counts from their making.
#[test]
fn certificates_are_valid_from_the_epoch_and_expire_from_their_making() {
    let from = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ca = Ca::generate("deployment").unwrap();
    let node = ca.issue_node("site-a").unwrap();
    let (ca_from, ca_until) = from(ca.cert_der());
    let (node_from, node_until) = from(node.cert_der());
    assert_eq!((ca_from, node_from), (0, 0));
    let day = 86_400;
    assert!((ca_until - now - 36_525 * day).abs() < day, "{ca_until}");
    assert!((node_until - now - 7_305 * day).abs() < day, "{node_until}");
    // A seal's certificate is checked as of its own start, within the CA's validity.
    let identity = Identity::new(&ca, &node).unwrap();
    let verifier = edgerep_transport::seal::Verifier::new(&identity).unwrap();
    verifier.check_cert(node.cert_der()).unwrap();
}
