//! This node's [`edgerep_store::Keys`]: it signs seals with the key of its TLS identity and
//! checks its peers' seals against their certificates, which must chain to the deployment CA,
//! name the origin, and (for a revoked node) cover only events up to its revocation point.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerep_config::Config;
use edgerep_store::KeyError;
use edgerep_transport::certs::Identity;
use edgerep_transport::seal::{NodeKey, SealError, Signer, Verifier};
use edgerep_wire::NodeId;
use edgerep_wire::seal::MAX_CERTS_PER_ORIGIN;

/// Signs and verifies seals (see the module docs).
pub struct NodeKeys {
    node: NodeId,
    signer: Signer,
    verifier: Verifier,
    /// Per origin, the keys of its certificates, once checked, and the certificates (DER), in
    /// the order learnt: at most [`MAX_CERTS_PER_ORIGIN`]. A seal verifies under any of them;
    /// none is ever replaced (a peer sending an origin's old certificate must not take away
    /// the key its current events verify under).
    known: Mutex<KnownCerts>,
    /// Per revoked node, the last sequence number it may still vouch for (replaced on reload).
    revoked: Mutex<BTreeMap<NodeId, u64>>,
    /// Signatures checked lately: a connection's reader checks a batch's seals where it
    /// decodes them, and the committer's check of the same seal finds it here.
    verified: Mutex<Verified>,
    /// Certificates refused lately, so that a peer sending one again does not buy another
    /// parse and signature check.
    refused: Mutex<Refused>,
    /// Certificates checked against the CA (parsed and their signature verified), for tests.
    checked: AtomicU64,
    /// Seal signatures verified (not found among those checked lately), for tests.
    pub(crate) signatures_verified: AtomicU64,
}

/// Per origin, the keys of its certificates and the certificates (DER), in the order learnt.
type KnownCerts = BTreeMap<NodeId, Vec<(NodeKey, Vec<u8>)>>;

/// How many refused certificates [`NodeKeys`] remembers, and for how long: a certificate not
/// yet valid may become valid, so a refusal is not kept for good.
const REFUSED_KEPT: usize = 256;
const REFUSED_FOR: Duration = Duration::from_secs(60);

/// Certificates refused lately: by [`hash_of`] the origin they were sent under and their DER,
/// when and why.
type Refused = Recent<(Instant, KeyError)>;

/// How many checked signatures [`NodeKeys`] remembers.
const VERIFIED_KEPT: usize = 4096;

/// Signatures that verified: by [`hash_of`] the certificate that verified it, the message and
/// the signature, so a hit means these bytes verified under this certificate.
type Verified = Recent<()>;

/// BLAKE3 of `parts`, each after its length (so no two lists of parts hash alike).
fn hash_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// Values by hash, at most `kept` of them: the oldest is forgotten first.
struct Recent<V> {
    kept: usize,
    map: HashMap<[u8; 32], V>,
    order: VecDeque<[u8; 32]>,
}

impl<V> Recent<V> {
    fn new(kept: usize) -> Recent<V> {
        Recent {
            kept,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<&V> {
        self.map.get(key)
    }

    fn insert(&mut self, key: [u8; 32], value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            if self.order.len() > self.kept
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

/// Whether `cert` is among `held` (an origin's certificates); when it is not, refused if `held`
/// is full ([`MAX_CERTS_PER_ORIGIN`]).
fn already_held(
    held: &[(NodeKey, Vec<u8>)],
    origin: &NodeId,
    cert: &[u8],
) -> Result<bool, KeyError> {
    if held.iter().any(|(_, der)| der == cert) {
        return Ok(true);
    }
    if held.len() >= MAX_CERTS_PER_ORIGIN {
        return Err(KeyError::TooManyCertificates {
            origin: origin.clone(),
            held: held.len(),
        });
    }
    Ok(false)
}

/// Per revoked node, the last sequence number it may still vouch for.
fn revocations(config: &Config) -> BTreeMap<NodeId, u64> {
    config
        .revoked
        .iter()
        .map(|r| (r.node.clone(), r.after_seq))
        .collect()
}

impl NodeKeys {
    /// Checks `cert` as `origin`'s: its name first (a parse: a certificate under another
    /// origin's name costs no signature check), then its chain to the CA.
    fn check_cert(&self, origin: &NodeId, cert: &[u8]) -> Result<NodeKey, KeyError> {
        self.checked.fetch_add(1, Ordering::Relaxed);
        let named = edgerep_transport::certs::node_id_of(cert)
            .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        if named != *origin {
            return Err(KeyError::OtherNode {
                origin: origin.clone(),
                named,
            });
        }
        self.verifier
            .check_cert(cert)
            .map_err(|e| KeyError::BadCertificate(e.to_string()))
    }
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why a node's keys could not be made from its identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The signing key or the CA's roots are unusable.
    #[error("seal keys: {0}")]
    Keys(#[from] SealError),
    /// The node's own certificate does not check against its CA.
    #[error("this node's own certificate: {0}")]
    OwnCert(SealError),
}

impl NodeKeys {
    /// The keys of `identity`, with the revocations of `config`.
    pub fn new(identity: &Identity, config: &Config) -> Result<NodeKeys, KeysError> {
        let signer = Signer::new(identity)?;
        let verifier = Verifier::new(identity)?;
        let own = verifier
            .check_cert(signer.cert())
            .map_err(KeysError::OwnCert)?;
        let node = own.node.clone();
        let known = Mutex::new(BTreeMap::from([(
            node.clone(),
            vec![(own, signer.cert().to_vec())],
        )]));
        Ok(NodeKeys {
            node,
            signer,
            verifier,
            known,
            revoked: Mutex::new(revocations(config)),
            verified: Mutex::new(Recent::new(VERIFIED_KEPT)),
            refused: Mutex::new(Recent::new(REFUSED_KEPT)),
            checked: AtomicU64::new(0),
            signatures_verified: AtomicU64::new(0),
        })
    }

    /// Forgets the signatures checked lately (tests: the next check of each is a new one).
    #[cfg(test)]
    pub(crate) fn forget_verified(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .clear();
    }

    /// Takes in the revocations of a reloaded config.
    pub fn set_revoked(&self, config: &Config) {
        *self.revoked.lock().unwrap_or_else(|e| e.into_inner()) = revocations(config);
    }

    /// This node's certificate (DER).
    pub fn own_cert(&self) -> &[u8] {
        self.signer.cert()
    }

    /// The certificates (DER) of `origin` learnt (from the store at start, or from peers'
    /// messages since), in the order learnt.
    pub fn certs(&self, origin: &NodeId) -> Vec<Vec<u8>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(origin)
            .map(|certs| certs.iter().map(|(_, der)| der.clone()).collect())
            .unwrap_or_default()
    }
}

impl edgerep_store::Keys for NodeKeys {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signer
            .sign(message)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    fn verify(
        &self,
        origin: &NodeId,
        seq: u64,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyError> {
        let after = self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(origin)
            .copied();
        if let Some(after) = after
            && seq > after
        {
            return Err(KeyError::Revoked {
                origin: origin.clone(),
                after,
                seq,
            });
        }
        // The keys are taken out of the lock: a signature check under it would hold every
        // other check (the committer's among them) back.
        let keys: Vec<(NodeKey, [u8; 32])> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let certs = known.get(origin).ok_or_else(|| KeyError::NoCertificate {
                origin: origin.clone(),
                seq,
            })?;
            certs
                .iter()
                .map(|(key, der)| (key.clone(), hash_of(&[der, message, signature])))
                .collect()
        };
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if keys.iter().any(|(_, memo)| verified.get(memo).is_some()) {
                return Ok(());
            }
        }
        // Under each key in turn (the first learnt is the usual one): at most
        // MAX_CERTS_PER_ORIGIN checks for a seal that verifies under none.
        let mut last = None;
        for (key, memo) in keys {
            self.signatures_verified.fetch_add(1, Ordering::Relaxed);
            match self.verifier.verify(&key, message, signature) {
                Ok(()) => {
                    self.verified
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(memo, ());
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(KeyError::BadSignature(
            last.map_or_else(|| "no key".to_owned(), |e| e.to_string()),
        ))
    }

    fn learn(&self, origin: &NodeId, cert: &[u8]) -> Result<(), KeyError> {
        // This node's own key is the one it signs with: another certificate under its id (from
        // the store, or a peer) does not replace it, so it is not even checked.
        if *origin == self.node {
            return Ok(());
        }
        // A certificate already known needs no second check (peers send theirs once per
        // session, but a message may repeat one: each check parses and verifies X.509). Past
        // the bound, another is refused unchecked.
        {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if already_held(
                known.get(origin).map_or(&[][..], Vec::as_slice),
                origin,
                cert,
            )? {
                return Ok(());
            }
        }
        let refused_key = hash_of(&[origin.as_str().as_bytes(), cert]);
        let now = Instant::now();
        if let Some((_, why)) = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&refused_key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < REFUSED_FOR)
        {
            return Err(why.clone());
        }
        let key = self.check_cert(origin, cert).inspect_err(|why| {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(refused_key, (now, why.clone()));
        })?;
        // `check_cert` names the node as `node_id_of` did: `key.node` is `origin`. Added, never
        // replacing one (another caller may have added this one, or filled the bound, since
        // the look above).
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let held = known.entry(origin.clone()).or_default();
        if !already_held(held, origin, cert)? {
            held.push((key, cert.to_vec()));
        }
        Ok(())
    }

    fn vouches_up_to(&self, origin: &NodeId) -> Option<u64> {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(origin)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use edgerep_store::Keys as _;
    use edgerep_transport::certs::{Ca, Identity};

    use super::*;

    /// A starter config of node `id`, with `extra` TOML appended.
    fn config_of(id: &str, extra: &str) -> Config {
        let text = format!(
            "{}\n{extra}",
            edgerep_config::starter_toml(
                &NodeId::parse(id).unwrap(),
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            )
        );
        Config::parse(&text, std::path::Path::new("/nonexistent/edgerep.toml")).unwrap()
    }

    fn keys_of(ca: &Ca, id: &str) -> NodeKeys {
        let identity = Identity::new(ca, &ca.issue_node(id).unwrap()).unwrap();
        NodeKeys::new(&identity, &config_of(id, "")).unwrap()
    }

    /// Certificates a peer sends under an origin's name: another node's (valid) is refused by its
    /// name, before any signature check; one of another CA naming the origin by its chain;
    /// bytes that are no certificate as such. None is learnt.
    #[test]
    fn certificates_under_the_wrong_name_or_from_another_ca_are_refused() {
        let ca = Ca::generate("test").unwrap();
        let other_ca = Ca::generate("other").unwrap();
        let one = keys_of(&ca, "node-1");
        let two = keys_of(&ca, "node-2");
        let forged = keys_of(&other_ca, "node-3");
        let node3 = NodeId::parse("node-3").unwrap();
        assert!(matches!(
            two.learn(&node3, one.own_cert()),
            Err(KeyError::OtherNode { .. })
        ));
        assert!(matches!(
            two.learn(&node3, forged.own_cert()),
            Err(KeyError::BadCertificate(_))
        ));
        assert!(matches!(
            two.learn(&node3, b"garbage"),
            Err(KeyError::BadCertificate(_))
        ));
        let signature = forged.sign(b"m").unwrap();
        assert!(two.verify(&node3, 1, b"m", &signature).is_err());
    }

    /// A peer sending the same bad certificate again (each message may carry it) buys no
    /// second check; the same bytes under another origin's name, or another certificate, are
    /// checked; a good certificate is learnt as before.
    #[test]
    fn a_refused_certificate_is_not_checked_again() {
        let ca = Ca::generate("test").unwrap();
        let other_ca = Ca::generate("other").unwrap();
        let one = keys_of(&ca, "node-1");
        let two = keys_of(&ca, "node-2");
        let forged = keys_of(&other_ca, "node-3");
        let node3 = NodeId::parse("node-3").unwrap();
        let node4 = NodeId::parse("node-4").unwrap();
        let checked = || two.checked.load(Ordering::Relaxed);
        let first = two.learn(&node3, forged.own_cert()).unwrap_err();
        assert!(matches!(first, KeyError::BadCertificate(_)), "{first:?}");
        assert_eq!(checked(), 1);
        for _ in 0..100 {
            assert_eq!(two.learn(&node3, forged.own_cert()).unwrap_err(), first);
        }
        assert_eq!(checked(), 1, "the refusal was remembered");
        assert!(matches!(
            two.learn(&node4, forged.own_cert()),
            Err(KeyError::OtherNode { .. })
        ));
        assert_eq!(checked(), 2);
        let node1 = NodeId::parse("node-1").unwrap();
        two.learn(&node1, one.own_cert()).unwrap();
        assert_eq!(checked(), 3);
        two.learn(&node1, one.own_cert()).unwrap();
        assert_eq!(
            checked(),
            3,
            "a known certificate is not checked again either"
        );
    }

    /// An origin whose id the CA issued more than once (a site rebuilt with a new key): a peer
    /// sending its old certificate adds a key and takes none away, so the origin's current seals
    /// still verify (before, the old one replaced the current key, and the origin's next batch
    /// was refused as forged and its link cut, again after each reconnect). Past the bound of
    /// certificates per origin, another is refused unchecked and the held ones still serve.
    #[test]
    fn an_old_certificate_of_an_origin_adds_a_key_and_replaces_none() {
        let ca = Ca::generate("test").unwrap();
        let two = keys_of(&ca, "node-2");
        let node3 = NodeId::parse("node-3").unwrap();
        let current = keys_of(&ca, "node-3");
        let issued: Vec<NodeKeys> = (0..MAX_CERTS_PER_ORIGIN)
            .map(|_| keys_of(&ca, "node-3"))
            .collect();
        two.learn(&node3, current.own_cert()).unwrap();
        let signed_now = current.sign(b"m").unwrap();
        two.verify(&node3, 1, b"m", &signed_now).unwrap();
        for old in &issued[..MAX_CERTS_PER_ORIGIN - 1] {
            two.learn(&node3, old.own_cert()).unwrap();
            // Checked afresh (not from the memo of the first check).
            two.verified.lock().unwrap().map.clear();
            two.verify(&node3, 1, b"m", &signed_now).unwrap();
            two.verify(&node3, 1, b"m", &old.sign(b"m").unwrap())
                .unwrap();
        }
        assert_eq!(two.certs(&node3).len(), MAX_CERTS_PER_ORIGIN);
        assert_eq!(two.certs(&node3)[0], current.own_cert());
        let checked = two.checked.load(Ordering::Relaxed);
        let last = &issued[MAX_CERTS_PER_ORIGIN - 1];
        assert!(matches!(
            two.learn(&node3, last.own_cert()),
            Err(KeyError::TooManyCertificates { held, .. }) if held == MAX_CERTS_PER_ORIGIN
        ));
        assert_eq!(
            two.checked.load(Ordering::Relaxed),
            checked,
            "refused unchecked"
        );
        two.verify(&node3, 1, b"m", &signed_now).unwrap();
        assert!(matches!(
            two.verify(&node3, 1, b"m", &last.sign(b"m").unwrap()),
            Err(KeyError::BadSignature(_))
        ));
    }

    #[test]
    fn a_remembered_signature_is_only_the_one_that_verified() {
        let ca = Ca::generate("test").unwrap();
        let one = keys_of(&ca, "node-1");
        let two = keys_of(&ca, "node-2");
        let node1 = NodeId::parse("node-1").unwrap();
        two.learn(&node1, one.own_cert()).unwrap();
        let message = b"a seal's message".to_vec();
        let signature = one.sign(&message).unwrap();
        two.verify(&node1, 7, &message, &signature).unwrap();
        two.verify(&node1, 7, &message, &signature).unwrap();
        // Another message under the remembered signature, or the signature changed.
        assert!(matches!(
            two.verify(&node1, 7, b"another message", &signature),
            Err(KeyError::BadSignature(_))
        ));
        let mut changed = signature.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(two.verify(&node1, 7, &message, &changed).is_err());
        // Revoked after 5: refused, remembered or not.
        two.set_revoked(&config_of(
            "node-2",
            "[[revoked]]\nnode = \"node-1\"\nafter_seq = 5\n",
        ));
        assert!(matches!(
            two.verify(&node1, 7, &message, &signature),
            Err(KeyError::Revoked { after: 5, .. })
        ));
    }
}
