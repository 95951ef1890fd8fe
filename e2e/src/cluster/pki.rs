//! The test cluster's certificates and keys, made with the `openssl` command as a cluster
//! administrator would: one CA, the API server's serving certificate, one client certificate
//! per component (so RBAC sees each as the user its bootstrap roles name), and the key that
//! signs ServiceAccount tokens. Elliptic-curve keys: quick to make, accepted everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

/// Where each piece lives, all under one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

/// A client identity: its certificate's common name and organisation (its groups).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub file: &'static str,
    pub user: &'static str,
    pub group: Option<&'static str>,
}

/// The cluster administrator: `system:masters` is bound to `cluster-admin`.
pub const ADMIN: Identity = Identity {
    file: "admin",
    user: "mirrornet-e2e-admin",
    group: Some("system:masters"),
};
/// The users the API server's bootstrap RBAC policy grants the controller-manager's and the
/// scheduler's roles.
pub const CONTROLLER_MANAGER: Identity = Identity {
    file: "controller-manager",
    user: "system:kube-controller-manager",
    group: None,
};
pub const SCHEDULER: Identity = Identity {
    file: "scheduler",
    user: "system:kube-scheduler",
    group: None,
};

/// The names the serving certificate answers to: loopback, where the harness and the pods'
/// forwarded connections reach it, and the in-cluster names of the `kubernetes` Service.
const SERVING_NAMES: &str = "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,\
DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local";

impl Pki {
    /// Makes every certificate and key in `dir`.
    pub fn create(dir: &Path) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        pki.key("ca")?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=mirrornet-e2e-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        )?;
        pki.signed(
            "apiserver",
            "/CN=kube-apiserver",
            Some(SERVING_NAMES),
            "serverAuth",
        )?;
        for id in [ADMIN, CONTROLLER_MANAGER, SCHEDULER] {
            let subject = match id.group {
                Some(group) => format!("/O={group}/CN={}", id.user),
                None => format!("/CN={}", id.user),
            };
            pki.signed(id.file, &subject, None, "clientAuth")?;
        }
        // The ServiceAccount token signer: the API server signs with the private key and
        // verifies with the public one; the controller-manager signs legacy tokens with it.
        pki.key("sa")?;
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(pki)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn key(&self, name: &str) -> Result<(), ClusterError> {
        openssl(
            &self.dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ],
        )
    }

    fn signed(
        &self,
        name: &str,
        subject: &str,
        alt_names: Option<&str>,
        usage: &str,
    ) -> Result<(), ClusterError> {
        self.key(name)?;
        let csr = format!("{name}.csr");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        )?;
        let mut extensions = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usage}\n"
        );
        if let Some(names) = alt_names {
            extensions.push_str(&format!("subjectAltName={names}\n"));
        }
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(&ext, extensions).map_err(|e| ClusterError::io(&ext, e))?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        )
    }

    /// A kubeconfig for `id` against `server`, written next to the certificates.
    pub fn kubeconfig(&self, id: Identity, server: &str) -> Result<PathBuf, ClusterError> {
        let path = self.path(&format!("{}.kubeconfig", id.file));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    \
             client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n\
             current-context: e2e\n",
            ca = self.path("ca.crt").display(),
            user = id.user,
            crt = self.path(&format!("{}.crt", id.file)).display(),
            key = self.path(&format!("{}.key", id.file)).display(),
        );
        std::fs::write(&path, text).map_err(|e| ClusterError::io(&path, e))?;
        Ok(path)
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), ClusterError> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| ClusterError::Spawn {
            program: "openssl".into(),
            source: e,
        })?;
    if !output.status.success() {
        return Err(ClusterError::Failed {
            command: format!("openssl {}", args.join(" ")),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}
