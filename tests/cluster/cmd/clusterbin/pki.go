package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// A client certificate the API server trusts: user name and groups, as its authenticator reads them.
type identity struct {
	file   string
	user   string
	groups []string
}

var identities = []identity{
	{file: "admin", user: "kubernetes-admin", groups: []string{"system:masters"}},
	{file: "controller-manager", user: "system:kube-controller-manager"},
	// The test kubelet binds pods and writes their status for every node it fakes, which the
	// Node authorizer allows no single node: it acts as an administrator.
	{file: "kubelet", user: "connbalance-test-kubelet", groups: []string{"system:masters"}},
	// Prometheus gets only what an RBAC role grants it (made by the cluster start-up).
	{file: "prometheus", user: "connbalance-prometheus"},
}

// runPKI writes a CA, the API server's serving pair, client pairs with kubeconfigs, and the
// service-account signing key into a fresh directory.
func runPKI(args []string) int {
	flags := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := flags.String("dir", "", "output directory")
	server := flags.String("server", "", "API server URL written into the kubeconfigs")
	serviceIP := flags.String("service-ip", "", "the kubernetes Service's cluster IP (a serving SAN)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if err := writePKI(*dir, *server, *serviceIP); err != nil {
		fmt.Fprintln(os.Stderr, "pki:", err)
		return 1
	}
	return 0
}

func writePKI(dir, server, serviceIP string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTemplate := template("connbalance-test-ca")
	caTemplate.IsCA = true
	caTemplate.BasicConstraintsValid = true
	caTemplate.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}

	serving := template("kube-apiserver")
	serving.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serving.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	serving.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	if ip := net.ParseIP(serviceIP); ip != nil {
		serving.IPAddresses = append(serving.IPAddresses, ip)
	}
	if err := issue(dir, "apiserver", serving, caCert, caKey); err != nil {
		return err
	}
	for _, id := range identities {
		client := template(id.user)
		client.Subject.Organization = id.groups
		client.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if err := issue(dir, id.file, client, caCert, caKey); err != nil {
			return err
		}
		if err := writeKubeconfig(dir, id, server); err != nil {
			return err
		}
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub)
}

func template(commonName string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func issue(dir, name string, cert, ca *x509.Certificate, caKey crypto.Signer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, cert, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+".key"), "EC PRIVATE KEY", keyDER)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func writeKubeconfig(dir string, id identity, server string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: test
  context:
    cluster: test
    user: %s
current-context: test
`, server, filepath.Join(abs, "ca.crt"), id.file, filepath.Join(abs, id.file+".crt"),
		filepath.Join(abs, id.file+".key"), id.file)
	return os.WriteFile(filepath.Join(dir, id.file+".kubeconfig"), []byte(text), 0o600)
}
