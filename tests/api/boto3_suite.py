"""Every operation of `kmsfs serve` through boto3, with its error cases and a concurrency run.

Run by tests/api_server.rs, which starts the server and sets KMSFS_ENDPOINT and the access
keys: KMSFS_ROOT_KEY_ID/SECRET (principal uid:0) and KMSFS_USER_KEY_ID/SECRET (uid:4242).
"""

import base64
import concurrent.futures
import hashlib
import os
import sys
import unittest

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

ENDPOINT = os.environ["KMSFS_ENDPOINT"]


def client(key_id=None, secret=None):
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=key_id or os.environ["KMSFS_ROOT_KEY_ID"],
        aws_secret_access_key=secret or os.environ["KMSFS_ROOT_SECRET"],
        config=Config(retries={"max_attempts": 1}),
    )


ROOT = client()
USER = client(os.environ["KMSFS_USER_KEY_ID"], os.environ["KMSFS_USER_SECRET"])


class KmsTest(unittest.TestCase):
    def fails(self, code, fn, **kw):
        with self.assertRaises(ClientError) as cm:
            fn(**kw)
        self.assertEqual(cm.exception.response["Error"]["Code"], code, cm.exception)
        return cm.exception

    def new_key(self, **kw):
        return ROOT.create_key(**kw)["KeyMetadata"]["KeyId"]


class Keys(KmsTest):
    def test_create_describe_list_and_aliases(self):
        md = ROOT.create_key(
            Description="boto3 key", Tags=[{"TagKey": "team", "TagValue": "infra"}]
        )["KeyMetadata"]
        kid = md["KeyId"]
        self.assertEqual(md["KeyState"], "Enabled")
        self.assertEqual(md["KeySpec"], "SYMMETRIC_DEFAULT")
        self.assertEqual(md["EncryptionAlgorithms"], ["SYMMETRIC_DEFAULT"])
        self.assertEqual(md["CreationDate"].year >= 2024, True)
        d = ROOT.describe_key(KeyId=kid)["KeyMetadata"]
        self.assertEqual(d["Description"], "boto3 key")
        self.assertEqual(d["Arn"], md["Arn"])
        # Pagination: a Limit of 1 walks every key.
        self.new_key()
        seen, marker = [], None
        while True:
            kw = {"Limit": 1}
            if marker:
                kw["Marker"] = marker
            page = ROOT.list_keys(**kw)
            seen += [k["KeyId"] for k in page["Keys"]]
            if not page["Truncated"]:
                break
            marker = page["NextMarker"]
        self.assertIn(kid, seen)
        self.assertEqual(len(seen), len(set(seen)))
        ROOT.create_alias(AliasName="alias/boto3-app", TargetKeyId=kid)
        self.assertEqual(ROOT.describe_key(KeyId="alias/boto3-app")["KeyMetadata"]["KeyId"], kid)
        names = [a["AliasName"] for a in ROOT.list_aliases(KeyId=kid)["Aliases"]]
        self.assertEqual(names, ["alias/boto3-app"])
        self.fails("AlreadyExistsException", ROOT.create_alias, AliasName="alias/boto3-app", TargetKeyId=kid)
        ROOT.delete_alias(AliasName="alias/boto3-app")
        self.fails("NotFoundException", ROOT.describe_key, KeyId="alias/boto3-app")
        self.fails("NotFoundException", ROOT.describe_key, KeyId="7d3bd7a4-0000-4000-8000-000000000000")
        # The ARN names the key too.
        self.assertEqual(ROOT.describe_key(KeyId=md["Arn"])["KeyMetadata"]["KeyId"], kid)

    def test_tags(self):
        kid = self.new_key()
        ROOT.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
        tags = ROOT.list_resource_tags(KeyId=kid)["Tags"]
        self.assertEqual(tags, [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
        ROOT.untag_resource(KeyId=kid, TagKeys=["a"])
        self.assertEqual(ROOT.list_resource_tags(KeyId=kid)["Tags"], [{"TagKey": "b", "TagValue": "2"}])

    def test_enable_disable_and_deletion(self):
        kid = self.new_key()
        blob = ROOT.encrypt(KeyId=kid, Plaintext=b"x")["CiphertextBlob"]
        ROOT.disable_key(KeyId=kid)
        self.assertEqual(ROOT.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"], "Disabled")
        self.fails("DisabledException", ROOT.encrypt, KeyId=kid, Plaintext=b"x")
        self.fails("DisabledException", ROOT.decrypt, CiphertextBlob=blob)
        ROOT.enable_key(KeyId=kid)
        self.assertEqual(ROOT.decrypt(CiphertextBlob=blob)["Plaintext"], b"x")
        self.fails("ValidationException", ROOT.schedule_key_deletion, KeyId=kid, PendingWindowInDays=6)
        r = ROOT.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
        self.assertEqual(r["KeyState"], "PendingDeletion")
        self.assertEqual(r["PendingWindowInDays"], 7)
        self.assertIn("DeletionDate", r)
        self.fails("KMSInvalidStateException", ROOT.encrypt, KeyId=kid, Plaintext=b"x")
        self.fails("KMSInvalidStateException", ROOT.decrypt, CiphertextBlob=blob)
        ROOT.cancel_key_deletion(KeyId=kid)
        # As in AWS, a cancelled deletion leaves the key disabled.
        self.assertEqual(ROOT.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"], "Disabled")

    def test_rotation(self):
        kid = self.new_key()
        old = ROOT.encrypt(KeyId=kid, Plaintext=b"before")["CiphertextBlob"]
        self.assertFalse(ROOT.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"])
        ROOT.enable_key_rotation(KeyId=kid, RotationPeriodInDays=90)
        st = ROOT.get_key_rotation_status(KeyId=kid)
        self.assertTrue(st["KeyRotationEnabled"])
        self.assertEqual(st["RotationPeriodInDays"], 90)
        ROOT.disable_key_rotation(KeyId=kid)
        self.assertFalse(ROOT.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"])
        self.assertEqual(ROOT.list_key_rotations(KeyId=kid)["Rotations"], [])
        ROOT.rotate_key_on_demand(KeyId=kid)
        rot = ROOT.list_key_rotations(KeyId=kid)["Rotations"]
        self.assertEqual([r["RotationType"] for r in rot], ["ON_DEMAND"])
        self.assertEqual(ROOT.decrypt(CiphertextBlob=old)["Plaintext"], b"before")


class Crypto(KmsTest):
    def test_encrypt_decrypt_context_and_wrong_key(self):
        kid = self.new_key()
        other = self.new_key()
        r = ROOT.encrypt(KeyId=kid, Plaintext=b"secret", EncryptionContext={"app": "web"})
        self.assertEqual(r["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        blob = r["CiphertextBlob"]
        d = ROOT.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "web"})
        self.assertEqual(d["Plaintext"], b"secret")
        self.assertTrue(d["KeyId"].endswith(kid))
        self.fails("InvalidCiphertextException", ROOT.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "db"})
        self.fails("InvalidCiphertextException", ROOT.decrypt, CiphertextBlob=blob)
        self.fails("IncorrectKeyException", ROOT.decrypt, CiphertextBlob=blob,
                   EncryptionContext={"app": "web"}, KeyId=other)
        tampered = bytearray(blob)
        tampered[-1] ^= 1
        self.fails("InvalidCiphertextException", ROOT.decrypt, CiphertextBlob=bytes(tampered),
                   EncryptionContext={"app": "web"})
        self.fails("ValidationException", ROOT.encrypt, KeyId=kid, Plaintext=b"x" * 4097)
        # ReEncrypt moves the blob to another key and context without showing the plaintext.
        re = ROOT.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"app": "web"},
                             DestinationKeyId=other, DestinationEncryptionContext={"app": "db"})
        self.assertTrue(re["KeyId"].endswith(other))
        self.assertTrue(re["SourceKeyId"].endswith(kid))
        d = ROOT.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"app": "db"})
        self.assertEqual(d["Plaintext"], b"secret")

    def test_data_keys_and_random(self):
        kid = self.new_key()
        dk = ROOT.generate_data_key(KeyId=kid, KeySpec="AES_256", EncryptionContext={"f": "1"})
        self.assertEqual(len(dk["Plaintext"]), 32)
        back = ROOT.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"f": "1"})
        self.assertEqual(back["Plaintext"], dk["Plaintext"])
        self.assertEqual(len(ROOT.generate_data_key(KeyId=kid, NumberOfBytes=64)["Plaintext"]), 64)
        wp = ROOT.generate_data_key_without_plaintext(KeyId=kid, KeySpec="AES_128")
        self.assertNotIn("Plaintext", wp)
        self.assertEqual(len(ROOT.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]), 16)
        self.fails("ValidationException", ROOT.generate_data_key, KeyId=kid, NumberOfBytes=1025)
        r = ROOT.generate_random(NumberOfBytes=32)["Plaintext"]
        self.assertEqual(len(r), 32)
        self.assertNotEqual(r, ROOT.generate_random(NumberOfBytes=32)["Plaintext"])
        kp = ROOT.generate_data_key_pair(KeyId=kid, KeyPairSpec="ECC_NIST_P256")
        priv = serialization.load_der_private_key(kp["PrivateKeyPlaintext"], None)
        pub = serialization.load_der_public_key(kp["PublicKey"])
        self.assertEqual(
            priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        )
        self.assertEqual(ROOT.decrypt(CiphertextBlob=kp["PrivateKeyCiphertextBlob"])["Plaintext"],
                         kp["PrivateKeyPlaintext"])
        kw = ROOT.generate_data_key_pair_without_plaintext(KeyId=kid, KeyPairSpec="RSA_2048")
        self.assertNotIn("PrivateKeyPlaintext", kw)
        self.assertEqual(kw["KeyPairSpec"], "RSA_2048")

    def test_sign_verify_and_public_keys(self):
        for spec, alg in [("RSA_2048", "RSASSA_PSS_SHA_256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256"),
                          ("ECC_NIST_P256", "ECDSA_SHA_256"), ("ECC_NIST_P384", "ECDSA_SHA_384")]:
            kid = self.new_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")
            md = ROOT.describe_key(KeyId=kid)["KeyMetadata"]
            self.assertIn(alg, md["SigningAlgorithms"])
            sig = ROOT.sign(KeyId=kid, Message=b"msg", MessageType="RAW", SigningAlgorithm=alg)["Signature"]
            self.assertTrue(ROOT.verify(KeyId=kid, Message=b"msg", Signature=sig,
                                        SigningAlgorithm=alg)["SignatureValid"])
            self.fails("KMSInvalidSignatureException", ROOT.verify, KeyId=kid, Message=b"other",
                       Signature=sig, SigningAlgorithm=alg)
            # The exported public key verifies the signature outside the KMS.
            pk = ROOT.get_public_key(KeyId=kid)
            self.assertEqual(pk["KeyUsage"], "SIGN_VERIFY")
            pub = serialization.load_der_public_key(pk["PublicKey"])
            h = hashes.SHA384() if alg.endswith("384") else hashes.SHA256()
            if spec.startswith("ECC"):
                pub.verify(sig, b"msg", ec.ECDSA(h))
            elif "PSS" in alg:
                pub.verify(sig, b"msg", padding.PSS(padding.MGF1(h), h.digest_size), h)
            else:
                pub.verify(sig, b"msg", padding.PKCS1v15(), h)
            # DIGEST: the message is already hashed and is not hashed again.
            digest = hashlib.new(h.name, b"msg").digest()
            sig2 = ROOT.sign(KeyId=kid, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)["Signature"]
            self.assertTrue(ROOT.verify(KeyId=kid, Message=b"msg", Signature=sig2,
                                        SigningAlgorithm=alg)["SignatureValid"])
        self.fails("InvalidKeyUsageException", ROOT.sign, KeyId=kid, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
        self.fails("UnsupportedOperationException", ROOT.rotate_key_on_demand, KeyId=kid)

    def test_rsa_encryption(self):
        kid = self.new_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")
        pk = ROOT.get_public_key(KeyId=kid)
        self.assertEqual(pk["EncryptionAlgorithms"], ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
        pub = serialization.load_der_public_key(pk["PublicKey"])
        ct = pub.encrypt(b"hello", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
        d = ROOT.decrypt(CiphertextBlob=ct, KeyId=kid, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        self.assertEqual(d["Plaintext"], b"hello")
        e = ROOT.encrypt(KeyId=kid, Plaintext=b"x" * 318, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        self.assertEqual(len(e["CiphertextBlob"]), 384)
        self.fails("ValidationException", ROOT.encrypt, KeyId=kid, Plaintext=b"x" * 319,
                   EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        self.fails("InvalidKeyUsageException", ROOT.encrypt, KeyId=kid, Plaintext=b"x")

    def test_macs(self):
        kid = self.new_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
        self.assertEqual(ROOT.describe_key(KeyId=kid)["KeyMetadata"]["MacAlgorithms"], ["HMAC_SHA_256"])
        mac = ROOT.generate_mac(KeyId=kid, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
        self.assertEqual(len(mac), 32)
        self.assertTrue(ROOT.verify_mac(KeyId=kid, Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_256")["MacValid"])
        self.fails("KMSInvalidMacException", ROOT.verify_mac, KeyId=kid, Message=b"n", Mac=mac,
                   MacAlgorithm="HMAC_SHA_256")
        self.fails("InvalidKeyUsageException", ROOT.generate_mac, KeyId=kid, Message=b"m", MacAlgorithm="HMAC_SHA_512")

    def test_import_key_material(self):
        kid = self.new_key(Origin="EXTERNAL")
        self.assertEqual(ROOT.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"], "PendingImport")
        self.fails("KMSInvalidStateException", ROOT.encrypt, KeyId=kid, Plaintext=b"x")
        p = ROOT.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                           WrappingKeySpec="RSA_2048")
        self.assertIn("ParametersValidTo", p)
        pub = serialization.load_der_public_key(p["PublicKey"])
        material = os.urandom(32)
        wrapped = pub.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
        # A token for another key is refused.
        other = self.new_key(Origin="EXTERNAL")
        self.fails("InvalidImportTokenException", ROOT.import_key_material, KeyId=other,
                   ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped,
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        ROOT.import_key_material(KeyId=kid, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped,
                                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        self.assertEqual(ROOT.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"], "Enabled")
        blob = ROOT.encrypt(KeyId=kid, Plaintext=b"imported")["CiphertextBlob"]
        self.assertEqual(ROOT.decrypt(CiphertextBlob=blob)["Plaintext"], b"imported")
        self.fails("UnsupportedOperationException", ROOT.get_parameters_for_import, KeyId=self.new_key(),
                   WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")


class Policies(KmsTest):
    def test_policy_deny_wins_for_api_callers(self):
        kid = self.new_key()
        self.assertEqual(ROOT.list_key_policies(KeyId=kid)["PolicyNames"], ["default"])
        policy = ROOT.get_key_policy(KeyId=kid, PolicyName="default")["Policy"]
        self.assertIn("kms:*", policy)
        # uid 4242 is not in the default policy.
        self.fails("AccessDeniedException", USER.encrypt, KeyId=kid, Plaintext=b"x")
        new = """{"Version": "2012-10-17", "Statement": [
          {"Sid": "root", "Effect": "Allow", "Principal": {"Local": "uid:0"}, "Action": "kms:*", "Resource": "*"},
          {"Sid": "user", "Effect": "Allow", "Principal": {"Local": "uid:4242"}, "Action": "kms:*", "Resource": "*"},
          {"Sid": "no-decrypt", "Effect": "Deny", "Principal": {"Local": "uid:4242"}, "Action": "kms:Decrypt", "Resource": "*"}
        ]}"""
        ROOT.put_key_policy(KeyId=kid, PolicyName="default", Policy=new)
        blob = USER.encrypt(KeyId=kid, Plaintext=b"for root only")["CiphertextBlob"]
        e = self.fails("AccessDeniedException", USER.decrypt, CiphertextBlob=blob)
        self.assertIn("no-decrypt", str(e))
        self.assertEqual(ROOT.decrypt(CiphertextBlob=blob)["Plaintext"], b"for root only")
        # A policy that would lock the caller out is refused unless the check is bypassed.
        lockout = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Local": "uid:9"}, "Action": "kms:*", "Resource": "*"}]}'
        self.fails("ValidationException", ROOT.put_key_policy, KeyId=kid, PolicyName="default", Policy=lockout)
        self.fails("NotFoundException", ROOT.get_key_policy, KeyId=kid, PolicyName="other")

    def test_identities(self):
        bad = client(os.environ["KMSFS_ROOT_KEY_ID"], "not-the-secret")
        self.fails("AccessDeniedException", bad.list_keys)
        stranger = client("AKIDUNKNOWN", "x")
        self.fails("UnrecognizedClientException", stranger.list_keys)


class Concurrency(KmsTest):
    def test_parallel_clients_lose_no_updates(self):
        kid = self.new_key()
        threads, per = 12, 6

        def work(t):
            c = client()  # one client per thread, as boto3 advises
            out = []
            for i in range(per):
                name = f"alias/par-{t}-{i}"
                c.create_alias(AliasName=name, TargetKeyId=kid)
                msg = f"{t}:{i}".encode()
                blob = c.encrypt(KeyId=kid, Plaintext=msg, EncryptionContext={"t": str(t)})["CiphertextBlob"]
                out.append(c.decrypt(CiphertextBlob=blob, EncryptionContext={"t": str(t)})["Plaintext"] == msg)
            return out

        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            results = [r for rs in ex.map(work, range(threads)) for r in rs]
        self.assertEqual(results, [True] * threads * per)
        names, marker = [], None
        while True:
            kw = {"KeyId": kid, "Limit": 50}
            if marker:
                kw["Marker"] = marker
            page = ROOT.list_aliases(**kw)
            names += [a["AliasName"] for a in page["Aliases"]]
            if not page["Truncated"]:
                break
            marker = page["NextMarker"]
        want = {f"alias/par-{t}-{i}" for t in range(threads) for i in range(per)}
        self.assertEqual(set(names), want)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
