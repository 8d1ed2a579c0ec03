// The OAuth2 identity provider of mailfetch's tests: npm's oauth2-mock-server
// (a real JWT issuer: authorization code with PKCE, client credentials,
// refresh), made as strict as a real provider with its hooks, plus the one
// endpoint it lacks.
//
// Usage: node server.mjs KEY_DIR
//
// Listens on 127.0.0.1 on a free port, writes the signing key's public half
// as PEM to KEY_DIR/default/RS256/mailfetch (where Dovecot's oauth2 passdb
// looks with local_validation_key_dict = fs:posix:prefix=KEY_DIR/), and
// prints one JSON line {"url": ISSUER} on stdout when ready.
//
// What it adds to the mock, as a real provider behaves:
// * every token names the mailbox: `sub` and `email` are MOCK_EMAIL (the
//   mock puts "johndoe" in user tokens and no user at all in
//   client-credentials tokens);
// * access tokens live MOCK_TTL seconds (default 3600), in `exp` and
//   `expires_in`;
// * a client listed in MOCK_CLIENT_SECRETS ({"id": "secret"}) must present
//   its secret (form or HTTP Basic), else 401 invalid_client;
// * refresh tokens are remembered: an unknown or revoked one gets 400
//   invalid_grant, and each use rotates it, as Microsoft does; the used one
//   stays valid until its successor is first used (so a client killed
//   before it stored the successor is not locked out, as with Microsoft,
//   whose old refresh tokens stay valid);
// * the device authorization grant (RFC 8628), which the mock lacks:
//   POST /devicecode, then token polls answered authorization_pending once,
//   slow_down when polled faster than the interval, then tokens.
//
// Test controls (plain HTTP, loopback only):
// * POST /test/revoke: every refresh token issued so far becomes invalid;
// * POST /test/ttl?seconds=N: later access tokens live N seconds;
// * POST /test/delay?ms=N: refresh requests are answered N ms late;
// * GET /test/stats: {"grants": {grant_type: count}, "slow_down": n}.
import { createServer } from "node:http";
import { createPublicKey, randomUUID } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const keyDir = process.argv[2];
if (!keyDir) {
  console.error("usage: node server.mjs KEY_DIR");
  process.exit(2);
}
const email = process.env.MOCK_EMAIL ?? "user@example.com";
let ttl = Number(process.env.MOCK_TTL ?? 3600);
const clientSecrets = JSON.parse(process.env.MOCK_CLIENT_SECRETS ?? "{}");

const DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
const DEVICE_INTERVAL = 1;

const issuer = new OAuth2Issuer();
const jwk = await issuer.keys.generate("RS256", { kid: "mailfetch" });
const pem = createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "pem" });
mkdirSync(join(keyDir, "default", "RS256"), { recursive: true });
writeFileSync(join(keyDir, "default", "RS256", "mailfetch"), pem);

const service = new OAuth2Service(issuer);
// refresh token -> the token it replaced (which dies when this one is used)
const liveRefreshTokens = new Map();
let refreshDelayMs = 0;
const stats = { grants: {}, slow_down: 0 };
// device_code -> { polls, lastPoll (ms), scope }
const devices = new Map();

service.on("beforeTokenSigning", (token) => {
  const now = Math.floor(Date.now() / 1000);
  token.payload.sub = email;
  token.payload.email = email;
  token.payload.exp = now + ttl;
});

service.on("beforeResponse", (response, req) => {
  const body = req.body;
  if (response.statusCode !== 200) return;
  if (body.grant_type === "refresh_token") {
    if (!liveRefreshTokens.has(body.refresh_token)) {
      response.statusCode = 400;
      response.body = {
        error: "invalid_grant",
        error_description: "AADSTS70008: The refresh token has expired or is revoked.",
      };
      return;
    }
  }
  response.body.expires_in = ttl;
  if (body.grant_type === "refresh_token") {
    liveRefreshTokens.delete(liveRefreshTokens.get(body.refresh_token));
  }
  const predecessor = body.grant_type === "refresh_token" ? body.refresh_token : undefined;
  if (response.body.refresh_token) liveRefreshTokens.set(response.body.refresh_token, predecessor);
});

function clientOf(req, form) {
  const basic = req.headers.authorization?.match(/^Basic (.+)$/i);
  if (basic) {
    const [id, secret] = Buffer.from(basic[1], "base64").toString().split(":");
    return { id: decodeURIComponent(id), secret: decodeURIComponent(secret ?? "") };
  }
  return { id: form.client_id, secret: form.client_secret };
}

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
    req.on("error", reject);
  });
}

async function deviceToken(res, form) {
  const device = devices.get(form.device_code);
  if (!device) return json(res, 400, { error: "invalid_grant" });
  const now = Date.now();
  const early = device.lastPoll !== undefined && now - device.lastPoll < DEVICE_INTERVAL * 1000 - 50;
  device.lastPoll = now;
  if (early) {
    stats.slow_down += 1;
    return json(res, 400, { error: "slow_down" });
  }
  device.polls += 1;
  if (device.polls < 2) return json(res, 400, { error: "authorization_pending" });
  devices.delete(form.device_code);
  const access = await service.buildToken({ body: form }, ttl, (_header, payload) => {
    payload.scope = device.scope;
  });
  const refresh = randomUUID();
  liveRefreshTokens.set(refresh, undefined);
  return json(res, 200, {
    access_token: access,
    token_type: "Bearer",
    expires_in: ttl,
    refresh_token: refresh,
    scope: device.scope,
  });
}

const app = service.requestHandler;
const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer.url);
    if (req.method === "GET" && url.pathname === "/test/stats") return json(res, 200, stats);
    if (req.method !== "POST") return app(req, res);
    const text = await readBody(req);
    const form = Object.fromEntries(new URLSearchParams(text));
    switch (url.pathname) {
      case "/test/revoke":
        liveRefreshTokens.clear();
        return json(res, 200, {});
      case "/test/ttl":
        ttl = Number(url.searchParams.get("seconds"));
        return json(res, 200, {});
      case "/test/delay":
        refreshDelayMs = Number(url.searchParams.get("ms"));
        return json(res, 200, {});
      case "/devicecode": {
        const deviceCode = randomUUID();
        devices.set(deviceCode, { polls: 0, scope: form.scope ?? "" });
        return json(res, 200, {
          device_code: deviceCode,
          user_code: "MAIL-FETCH",
          verification_uri: `${issuer.url}/device`,
          expires_in: 300,
          interval: DEVICE_INTERVAL,
        });
      }
      case "/token": {
        const client = clientOf(req, form);
        const expected = clientSecrets[client.id];
        if (expected !== undefined && client.secret !== expected) {
          return json(res, 401, { error: "invalid_client", error_description: "bad client secret" });
        }
        stats.grants[form.grant_type] = (stats.grants[form.grant_type] ?? 0) + 1;
        if (form.grant_type === DEVICE_GRANT) return await deviceToken(res, form);
        if (form.grant_type === "refresh_token" && refreshDelayMs > 0) {
          await new Promise((resolve) => setTimeout(resolve, refreshDelayMs));
        }
        break;
      }
    }
    // The mock's own handlers, with the body already read: body-parser
    // skips a request whose body is marked as parsed.
    req.body = form;
    req._body = true;
    return app(req, res);
  } catch (err) {
    json(res, 500, { error: "server_error", error_description: String(err) });
  }
});
server.listen(0, "127.0.0.1", () => {
  issuer.url = `http://127.0.0.1:${server.address().port}`;
  console.log(JSON.stringify({ url: issuer.url }));
});
