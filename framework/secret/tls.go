package secret

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Internal services talk TLS 1.3, both sides presenting a certificate. A
// process makes its own key and certificate when it starts; the secret
// endorses it: the certificate carries an HMAC, keyed by the secret, over
// the cluster id, the holder's role and id, and its public key. A peer
// that shows an endorsed certificate and completes the handshake (proving
// it holds the private key) is part of the cluster; anything else is
// refused before a byte of the protocol is exchanged. This gives what TLS
// with a cluster CA gives (mutual authentication, privacy and integrity on
// the wire between hosts) with nothing to distribute but the secret.

// Roles of the processes, as certificates name them.
const (
	RoleASD     = "asd"
	RoleArakoon = "arakoon"
	RoleBackend = "backend" // the volume driver's backend, the admin API
	RoleCLI     = "cli"
	RoleNode    = "node" // a storage router: I/O forwarding and node-to-node API calls
)

// endorsementOID is the certificate extension holding the endorsement
// (a private arc: only OVS reads it).
var endorsementOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 1}

// Endorsement is what an endorsed certificate says of its holder.
type Endorsement struct {
	Cluster string `json:"cluster"`
	Role    string `json:"role"`
	ID      string `json:"id"`
	MAC     []byte `json:"mac"`
}

func (s *Secret) endorse(role, id string, spki []byte) []byte {
	m := hmac.New(sha256.New, s.Key("tls-endorsement"))
	for _, f := range [][]byte{[]byte(s.ClusterID()), []byte(role), []byte(id), spki} {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(f)>>24), byte(len(f)>>16), byte(len(f)>>8), byte(len(f))
		m.Write(n[:])
		m.Write(f)
	}
	return m.Sum(nil)
}

// Certificate makes a key and a certificate endorsed for role and id.
func (s *Secret) Certificate(role, id string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls key: %w", err)
	}
	e := Endorsement{Cluster: s.ClusterID(), Role: role, ID: id, MAC: s.endorse(role, id, spki)}
	ext, _ := json.Marshal(e)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 96))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: role + ":" + id, Organization: []string{"ovs cluster " + s.ClusterID()}},
		NotBefore:       now.Add(-time.Hour),
		NotAfter:        now.Add(10 * 365 * 24 * time.Hour), // the endorsement, not the date, is what counts
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{{Id: endorsementOID, Value: ext}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ErrNotEndorsed: the peer's certificate is not endorsed by this cluster's
// secret (a foreign process, or another cluster).
var ErrNotEndorsed = errors.New("peer is not a member of this cluster")

// Verify checks that a certificate (DER) is endorsed by the secret and
// returns what it says of its holder.
func (s *Secret) Verify(der []byte) (Endorsement, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Endorsement{}, fmt.Errorf("%w: bad certificate: %v", ErrNotEndorsed, err)
	}
	for _, x := range cert.Extensions {
		if !x.Id.Equal(endorsementOID) {
			continue
		}
		var e Endorsement
		if err := json.Unmarshal(x.Value, &e); err != nil {
			return Endorsement{}, fmt.Errorf("%w: bad endorsement: %v", ErrNotEndorsed, err)
		}
		if e.Cluster != s.ClusterID() {
			return e, fmt.Errorf("%w: it belongs to cluster %s, this is cluster %s (another cluster's secret?)",
				ErrNotEndorsed, e.Cluster, s.ClusterID())
		}
		if !hmac.Equal(e.MAC, s.endorse(e.Role, e.ID, cert.RawSubjectPublicKeyInfo)) {
			return e, fmt.Errorf("%w: its certificate (%s %s) is not endorsed by the cluster secret", ErrNotEndorsed, e.Role, e.ID)
		}
		return e, nil
	}
	return Endorsement{}, fmt.Errorf("%w: its certificate (%q) carries no cluster endorsement", ErrNotEndorsed, cert.Subject.CommonName)
}

func (s *Secret) verifier(roles []string) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return fmt.Errorf("%w: it presented no certificate (no cluster credentials)", ErrNotEndorsed)
		}
		e, err := s.Verify(raw[0])
		if err != nil {
			return err
		}
		if len(roles) == 0 {
			return nil
		}
		for _, r := range roles {
			if e.Role == r {
				return nil
			}
		}
		return fmt.Errorf("%w: it is a %s (%s), want a %v", ErrNotEndorsed, e.Role, e.ID, roles)
	}
}

// ServerTLS is the TLS configuration of a service of the given role and
// id: it presents an endorsed certificate and requires one of its clients
// (of any role unless clientRoles are given).
func (s *Secret) ServerTLS(role, id string, clientRoles ...string) (*tls.Config, error) {
	cert, err := s.Certificate(role, id)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		ClientAuth:            tls.RequireAnyClientCert, // checked by VerifyPeerCertificate
		VerifyPeerCertificate: s.verifier(clientRoles),
	}, nil
}

// ClientTLS is the TLS configuration of a client of the given role and id
// that talks to services of serverRoles (any role if none).
func (s *Secret) ClientTLS(role, id string, serverRoles ...string) (*tls.Config, error) {
	cert, err := s.Certificate(role, id)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is not checked against a CA: VerifyPeerCertificate
		// checks the endorsement, and the handshake proves the key.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: s.verifier(serverRoles),
	}, nil
}

// PeerOf returns the endorsement of the peer of an established connection.
func (s *Secret) PeerOf(cs tls.ConnectionState) (Endorsement, error) {
	if len(cs.PeerCertificates) == 0 {
		return Endorsement{}, fmt.Errorf("%w: no certificate", ErrNotEndorsed)
	}
	return s.Verify(cs.PeerCertificates[0].Raw)
}
