"""Independent re-implementation of docs/FORMAT.md, checked against tests/vectors/.

Written from the document alone (Python `cryptography`; `argon2-cffi` optional for the
passphrase header and records), so the prose and the Rust code cannot drift apart unseen.
Usage: python3 tests/vectors/verify_format.py tests/vectors
"""
import json, hmac, hashlib, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
V = sys.argv[1]
def hkdf_extract(salt, ikm): return hmac.new(salt, ikm, hashlib.sha256).digest()
def hkdf_expand(prk, info): return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
def rotl(x, n): return ((x << n) | (x >> (32 - n))) & 0xffffffff
def hchacha20(key, nonce16):
    s = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574] + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    def qr(a,b,c,d):
        s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],16)
        s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],12)
        s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],8)
        s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],7)
    for _ in range(10):
        qr(0,4,8,12);qr(1,5,9,13);qr(2,6,10,14);qr(3,7,11,15)
        qr(0,5,10,15);qr(1,6,11,12);qr(2,7,8,13);qr(3,4,9,14)
    return struct.pack("<8I", *(s[0:4]+s[12:16]))
class XChaCha:
    def __init__(self, key): self.key = key
    def encrypt(self, nonce, pt, aad):
        return ChaCha20Poly1305(hchacha20(self.key, nonce[:16])).encrypt(b"\0"*4 + nonce[16:24], pt, aad)
    def decrypt(self, nonce, ct, aad):
        return ChaCha20Poly1305(hchacha20(self.key, nonce[:16])).decrypt(b"\0"*4 + nonce[16:24], ct, aad)
def aead(cipher, key):
    return (AESGCM(key), 12) if cipher == "aes256gcm" else (XChaCha(key), 24)
def subkeys(master, vid):
    prk = hkdf_extract(b"cryptbucket v1" + vid, master)
    return prk, {l: hkdf_expand(prk, l.encode()) for l in ["header-mac", "metadata", "staging", "commit"]}

# (a) chunk vectors
master = bytes(range(32)); vid = bytes(0xa0 + i for i in range(16)); cid = bytes(0xc0 + i for i in range(16))
pt = bytes(i % 251 for i in range(5000)); bs = 4096
for cipher in ["aes256gcm", "xchacha20poly1305"]:
    prk, _ = subkeys(master, vid)
    a, nl = aead(cipher, hkdf_expand(prk, b"chunk" + vid + cid))
    out = b"CBKT\x01\x01"; blocks = [pt[i:i+bs] for i in range(0, len(pt), bs)]
    for i, b in enumerate(blocks):
        last = i == len(blocks) - 1
        aad = b"\x01" + vid + cid + struct.pack("<I", i) + bytes([last])
        out += a.encrypt(struct.pack("<I", i) + b"\0" * (nl - 4), b, aad)
    want = bytes.fromhex(open(f"{V}/chunk-{cipher}.hex").read().strip())
    assert out == want, cipher
    print("chunk vector OK:", cipher)

# (b) headers
def open_header(path, kek_for_slot):
    outer = json.load(open(path)); body_s = outer["body"]; body = json.loads(body_s)
    vid = bytes.fromhex(body["volume_id"])
    for slot in body["slots"]:
        kek = kek_for_slot(slot)
        if kek is None: continue
        kind = {"passphrase": 1, "keyfile": 2}[slot["kind"]]
        aad = b"cryptbucket key slot" + b"\x01" + vid + bytes([kind])
        m = XChaCha(kek).decrypt(bytes.fromhex(slot["nonce"]), bytes.fromhex(slot["wrapped"]), aad)
        prk, sk = subkeys(m, vid)
        assert hmac.new(sk["commit"], b"cryptbucket key commitment" + vid, hashlib.sha256).hexdigest() == slot["commitment"]
        assert hmac.new(sk["header-mac"], body_s.encode(), hashlib.sha256).hexdigest() == outer["mac"]
        return body, sk
    raise SystemExit("no slot")
kf = open(f"{V}/keyfile.bin", "rb").read()
def kf_kek(slot):
    if slot["kind"] != "keyfile": return None
    return hkdf_expand(hkdf_extract(bytes.fromhex(slot["salt"]), kf), b"keyfile")
body, sk = open_header(f"{V}/header-keyfile.json", kf_kek)
print("keyfile header OK:", body["volume_id"])
try:
    import argon2.low_level as al
except ImportError:
    al = None
if al:
    def pw_kek(slot):
        k = slot["kdf"]
        return al.hash_secret_raw(b"correct horse battery staple", bytes.fromhex(slot["salt"]), k["t"], k["m_kib"], k["p"], 32, al.Type.ID, 0x13)
    body, sk = open_header(f"{V}/header-passphrase.json", pw_kek)
    print("passphrase header OK:", body["volume_id"])
    for name, kind, base in [("record-snapshot.bin", 3, "metadata"), ("record-staging.bin", 5, "staging")]:
        rec = open(f"{V}/{name}", "rb").read()
        assert rec[:6] == b"CBKT\x01" + bytes([kind])
        key = hkdf_expand(hkdf_extract(rec[6:38], sk[base]), b"record" + bytes([kind]))
        a, nl = aead(body["params"]["cipher"], key)
        print(name, "OK:", a.decrypt(b"\0" * nl, rec[38:], rec[:6]))
