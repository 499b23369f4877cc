package iscsi

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// FuzzLogin: any sequence of Login Requests leaves the login without a
// panic, and never reaches the full feature phase of a target that asks
// CHAP without the secret proved (no fuzzer finds an MD5 response).
func FuzzLogin(f *testing.F) {
	open := appendText(nil, kv{"InitiatorName", "iqn.x:i"}, kv{"TargetName", DefaultBaseIQN + ":open"},
		kv{"HeaderDigest", "CRC32C,None"}, kv{"MaxBurstLength", "0x1000"}, kv{"MaxOutstandingR2T", "99"})
	locked := appendText(nil, kv{"InitiatorName", "iqn.x:i"}, kv{"TargetName", DefaultBaseIQN + ":locked"},
		kv{"AuthMethod", "CHAP,None"})
	f.Add(byte(0x87), open, byte(0), []byte(nil), byte(0), []byte(nil))
	f.Add(byte(0x81), locked, byte(0x01), []byte("CHAP_A=5\x00"), byte(0x81),
		[]byte("CHAP_N=u\x00CHAP_R=0x00112233445566778899aabbccddeeff\x00CHAP_I=1\x00CHAP_C=0b AAEC\x00"))
	f.Add(byte(0x83), appendText(nil, kv{"InitiatorName", "iqn.x:i"}, kv{"SessionType", "Discovery"}), byte(0x47), []byte("X=1\x00"), byte(0x87), []byte(nil))
	f.Fuzz(func(t *testing.T, f1 byte, d1 []byte, f2 byte, d2 []byte, f3 byte, d3 []byte) {
		lu := newMemLU(memDev{memdev.New(1 << 16)})
		targets := &memTargets{lus: map[string]*scsi.LU{"open": lu, "locked": lu},
			chap: map[string]CHAP{"locked": {User: "u", Secret: "secret-secret-1", MutualUser: "t", MutualSecret: "secret-secret-2"}}}
		s := NewServer(targets, Options{Logger: slog.New(slog.DiscardHandler)})
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		c := newConn(context.Background(), s, a)
		defer c.cancel()
		l := &loginState{c: c, ctx: context.Background()}
		for _, step := range []struct {
			flags byte
			data  []byte
		}{{f1, d1}, {f2, d2}, {f3, d3}} {
			p := &pdu{data: step.data}
			p.bhs[0] = opLoginReq | 0x40
			p.bhs[1] = step.flags
			_, final, _, err := l.step(p)
			if err != nil {
				return
			}
			if final {
				if c.target == "locked" && (l.auth != authCHAP || l.chapStep != chapDone) {
					t.Fatalf("full feature phase of a CHAP target without CHAP (auth %q step %d)", l.auth, l.chapStep)
				}
				if c.maxR2T < 1 || c.maxR2T > ourMaxR2T || c.maxBurst < 512 || c.maxBurst > ourMaxBurst ||
					c.theirMaxData < 512 || c.firstBurst > c.maxBurst {
					t.Fatalf("negotiated out of range: R2T %d burst %d first %d data %d", c.maxR2T, c.maxBurst, c.firstBurst, c.theirMaxData)
				}
				return
			}
		}
	})
}
