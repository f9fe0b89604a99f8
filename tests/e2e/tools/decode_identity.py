"""Decodes certgate's identity headers with implementations certgate shares nothing with:
http_sfv (RFC 8941 structured fields) for RFC 9440, a parser written here from Envoy's
documentation for X-Forwarded-Client-Cert, and cryptography for the certificates.

Reads the backend's view of the headers as a JSON object (lower-case names) on stdin and
prints what they say as JSON. Used by tests/e2e/profiles.rs.
"""
import hashlib
import json
import sys
import urllib.parse

import http_sfv
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def describe(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns = [], []
    return {
        "subject": cert.subject.rfc4514_string(),
        "subject_attrs": [[a.oid.dotted_string, a.value] for a in cert.subject],
        "uris": uris,
        "dns": dns,
    }


def rfc9440(headers):
    out = {}
    if "client-cert" in headers:
        item = http_sfv.Item()
        item.parse(headers["client-cert"].encode())
        assert isinstance(item.value, bytes), "Client-Cert is not a byte sequence"
        out["cert"] = item.value.hex()
        out["parsed"] = describe(x509.load_der_x509_certificate(item.value))
    if "client-cert-chain" in headers:
        chain = http_sfv.List()
        chain.parse(headers["client-cert-chain"].encode())
        out["chain"] = [member.value.hex() for member in chain]
    return out


def xfcc_elements(value):
    """Envoy's documented grammar, exactly: elements separated by ',', key=value pairs by ';';
    a value holding ',', ';' or '=' is double-quoted, and a '"' in it is written as
    backslash-quote. That is the only escape: a backslash before anything else is itself, and
    backslash-quote is always an escaped quote. A quoted value must be followed by ';', ',' or
    the end; anything else (a quote read as escaped that swallowed what follows) is an error."""
    elements, pairs = [], []
    i, n = 0, len(value)
    while i < n:
        eq = value.index("=", i)
        key = value[i:eq].strip()
        i = eq + 1
        if i < n and value[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value for " + key)
                if value[i] == '"':
                    break
                if value[i] == "\\" and i + 1 < n and value[i + 1] == '"':
                    i += 1
                buf.append(value[i])
                i += 1
            i += 1
            if i < n and value[i] not in ";,":
                raise ValueError("quoted value for %s followed by %r" % (key, value[i]))
            val = "".join(buf)
        else:
            end = i
            while end < n and value[end] not in ";,":
                end += 1
            val = value[i:end]
            i = end
        pairs.append((key, val))
        if i < n and value[i] == ",":
            elements.append(pairs)
            pairs = []
        i += 1
    elements.append(pairs)
    return elements


def xfcc_elements_envoy_code(value):
    """How Envoy's own code reads the header (its XFCC_VALUE formatter): ',' and ';' separate
    outside quotes, and a '"' opens or closes a quoted part unless an odd number of backslashes
    come before it; a quoted value loses its quotes, and backslash-quote and
    backslash-backslash in it are unescaped. A header whose quoting this reading and the
    documented grammar take differently yields different fields here."""

    def split(text, sep):
        parts, start, quoted = [], 0, False
        for i, c in enumerate(text):
            if c == '"':
                k = 0
                while k < i and text[i - k - 1] == "\\":
                    k += 1
                if k % 2 == 0:
                    quoted = not quoted
            elif c == sep and not quoted:
                parts.append(text[start:i])
                start = i + 1
        if quoted:
            raise ValueError("unmatched quotes")
        parts.append(text[start:])
        return parts

    elements = []
    for element in split(value, ","):
        pairs = []
        for pair in split(element, ";"):
            key, _, raw = pair.partition("=")
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
                raw = raw[1:-1]
            buf, i = [], 0
            while i < len(raw):
                if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in '"\\':
                    i += 1
                buf.append(raw[i])
                i += 1
            pairs.append((key.strip().lower(), "".join(buf)))
        elements.append(pairs)
    return elements


def xfcc(headers):
    elements = xfcc_elements(headers["x-forwarded-client-cert"])
    out = {"elements": len(elements), "uris": [], "dns": []}
    code = xfcc_elements_envoy_code(headers["x-forwarded-client-cert"])
    out["envoy_code"] = {
        "elements": len(code),
        "subject": next((v for k, v in code[0] if k == "subject"), None),
        "uris": [v for k, v in code[0] if k == "uri"],
        "dns": [v for k, v in code[0] if k == "dns"],
    }
    for key, val in elements[0]:
        key = key.lower()
        if key == "hash":
            out["hash"] = val
        elif key == "cert":
            pem = urllib.parse.unquote(val).encode()
            cert = x509.load_pem_x509_certificate(pem)
            der = cert.public_bytes(Encoding.DER)
            out["cert"] = der.hex()
            out["cert_sha256"] = hashlib.sha256(der).hexdigest()
            out["parsed"] = describe(cert)
        elif key == "chain":
            pems = urllib.parse.unquote(val).encode()
            out["chain"] = [
                c.public_bytes(Encoding.DER).hex()
                for c in x509.load_pem_x509_certificates(pems)
            ]
        elif key == "subject":
            out["subject"] = val
            # What an RFC 4514 parser makes of it, to compare with the certificate's subject.
            out["subject_attrs"] = [
                [a.oid.dotted_string, a.value] for a in x509.Name.from_rfc4514_string(val)
            ]
        elif key == "uri":
            out["uris"].append(val)
        elif key == "dns":
            out["dns"].append(val)
    return out


headers = json.load(sys.stdin)
result = {}
if "client-cert" in headers or "client-cert-chain" in headers:
    result["rfc9440"] = rfc9440(headers)
if "x-forwarded-client-cert" in headers:
    result["xfcc"] = xfcc(headers)
json.dump(result, sys.stdout)
