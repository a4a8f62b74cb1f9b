package pricing.decode;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.util.Arrays;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.Map;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * {@code pricing_udfs.privacy.Pseudonymiser} in the JVM: {@code "<key id>:" + base64url(HMAC-SHA-256(key, user_id))[:22]}
 * (128 bits, no padding); an empty or missing id stays so. The key is read from its file when the worker opens,
 * never shipped with the job; the message of a failure names the file, never the key. An LRU cache keeps repeat
 * shoppers cheap. {@code tests/pricing_udfs/test_jvm_decoder.py} checks it against the Python one.
 */
final class Pseudonymiser {
    static final int MIN_KEY_BYTES = 32;
    private static final int CACHE = 100_000;

    private final Mac mac;
    private final String prefix;
    private final Map<String, String> cache = new LinkedHashMap<String, String>(1024, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(Map.Entry<String, String> eldest) {
            return size() > CACHE;
        }
    };

    Pseudonymiser(byte[] key, String keyId) {
        try {
            mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HMAC-SHA-256 is not available in this JVM", e);
        }
        prefix = keyId + ":";
    }

    static Pseudonymiser fromFile(Path path, String keyId) {
        byte[] key;
        try {
            key = Files.readAllBytes(path);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read the pseudonym key " + path + ": " + e.getClass().getSimpleName());
        }
        if (key.length < MIN_KEY_BYTES) {
            throw new IllegalStateException("the pseudonym key " + path + " has " + key.length + " bytes, fewer than " + MIN_KEY_BYTES);
        }
        Pseudonymiser out = new Pseudonymiser(key, keyId);
        Arrays.fill(key, (byte) 0);
        return out;
    }

    String apply(String userId) {
        if (userId == null || userId.isEmpty()) {
            return userId;
        }
        String hit = cache.get(userId);
        if (hit != null) {
            return hit;
        }
        byte[] digest = mac.doFinal(userId.getBytes(StandardCharsets.UTF_8));
        String out = prefix + Base64.getUrlEncoder().withoutPadding().encodeToString(Arrays.copyOf(digest, 16));
        cache.put(userId, out);
        return out;
    }
}
