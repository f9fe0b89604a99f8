//! The verified path: which of the certificates a client sent chain its certificate to a
//! trust anchor.
//!
//! A client may send any certificates after its own: webpki uses those that build a path and
//! ignores the rest, and the handshake's verifier says only "valid". RFC 9440's
//! `Client-Cert-Chain` and Envoy's XFCC `Chain` mean the chain used to validate, so a backend
//! that reads them must not receive a self-signed `CN=<script>` the client appended, nor a
//! genuine intermediate that took no part. rustls' `WebPkiClientVerifier` does not hand out the
//! path it built, so the path is built again here, once per connection right after the
//! handshake, with the same trust anchors, CRLs and policies, and webpki returns it.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use webpki::{
    CertRevocationList, ExpirationPolicy, OwnedCertRevocationList, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

use super::{CrlExpired, Tls};

/// Rebuilds the verified path of a client's certificate; see the module doc.
pub(crate) struct PathBuilder {
    roots: RootCertStore,
    crls: Vec<CertRevocationList<'static>>,
    expiration: ExpirationPolicy,
}

impl std::fmt::Debug for PathBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathBuilder")
            .field("anchors", &self.roots.len())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl PathBuilder {
    /// The anchors, CRLs and revocation policies of `tls`, as [`super::client_verifier`] gives
    /// them to its verifier. CAs or CRLs that do not load are left out: the verifier refuses
    /// the whole configuration then, so this builder is never used with them.
    pub(crate) fn new(tls: &Tls) -> Arc<PathBuilder> {
        Self::from_parts(&tls.client_cas, &tls.crls, tls.crl_expired)
    }

    fn from_parts(
        client_cas: &[CertificateDer<'static>],
        crls: &[CertificateRevocationListDer<'static>],
        crl_expired: CrlExpired,
    ) -> Arc<PathBuilder> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(client_cas.iter().cloned());
        let crls = crls
            .iter()
            .filter_map(|der| OwnedCertRevocationList::from_der(der.as_ref()).ok())
            .map(CertRevocationList::from)
            .collect();
        let expiration = match crl_expired {
            CrlExpired::Reject => ExpirationPolicy::Enforce,
            CrlExpired::Warn => ExpirationPolicy::Ignore,
        };
        Arc::new(PathBuilder {
            roots,
            crls,
            expiration,
        })
    }

    /// The verified path of `chain` (as the client sent it, leaf first): the leaf, then each
    /// issuer up to but not including the trust anchor, in that order. `None` when no path
    /// verifies now (the caller then sends no chain at all rather than the one presented).
    pub(crate) fn verified(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Option<Vec<CertificateDer<'static>>> {
        let (leaf, presented) = chain.split_first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        // The verifier's settings (`client_verifier`): every certificate of the path checked
        // against the CRLs, a CA without a CRL not checked.
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(self.expiration)
                .build()
        });
        let path = cert
            .verify_for_usage(
                super::provider().signature_verification_algorithms.all,
                &self.roots.roots,
                presented,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                revocation,
                None,
            )
            .ok()?;
        let mut out = vec![leaf.clone().into_owned()];
        out.extend(
            path.intermediate_certificates()
                .map(|c| c.der().into_owned()),
        );
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Profile, Spec, issue};

    #[test]
    fn the_path_is_the_chain_that_verifies_and_nothing_else() {
        let ca = issue(&Spec::new(Profile::Ca, "root", 30), None).unwrap();
        let inter = issue(&Spec::new(Profile::Ca, "inter", 30), Some(&ca)).unwrap();
        let unused = issue(&Spec::new(Profile::Ca, "unused", 30), Some(&ca)).unwrap();
        let stranger = issue(&Spec::new(Profile::Ca, "<script>", 30), None).unwrap();
        let leaf = issue(&Spec::new(Profile::Client, "leaf", 30), Some(&inter)).unwrap();
        let direct = issue(&Spec::new(Profile::Client, "direct", 30), Some(&ca)).unwrap();
        let paths =
            PathBuilder::from_parts(std::slice::from_ref(&ca.cert), &[], CrlExpired::Reject);
        // Extras in any order around the one intermediate that chains: only it is kept, and
        // the root, sent too, is the anchor and not part of the path.
        let sent = [
            leaf.cert.clone(),
            stranger.cert.clone(),
            unused.cert.clone(),
            ca.cert.clone(),
            inter.cert.clone(),
        ];
        assert_eq!(
            paths.verified(&sent).unwrap(),
            [leaf.cert.clone(), inter.cert.clone()]
        );
        let sent = [
            direct.cert.clone(),
            inter.cert.clone(),
            stranger.cert.clone(),
        ];
        assert_eq!(
            paths.verified(&sent).unwrap(),
            std::slice::from_ref(&direct.cert)
        );
        // No path: nothing to forward.
        assert!(paths.verified(std::slice::from_ref(&leaf.cert)).is_none());
        assert!(
            paths
                .verified(std::slice::from_ref(&stranger.cert))
                .is_none()
        );
        assert!(paths.verified(&[]).is_none());
    }
}
