// The REST API as the dashboard uses it: same-origin fetch with JSON
// bodies (the API refuses mutating calls of any other type) and the bearer
// token the user gave, if any.

const TOKEN_KEY = 'ovs.token';

// APIError is a failed call: the HTTP status, the API's error code
// ("not_found", "busy", ...) and its message.
export class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The token lives in sessionStorage: it is gone when the tab closes, and
// other sites cannot read it.
export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lasts for no call; nothing else to do.
  }
}

// call sends one request and returns the decoded JSON answer (null for an
// empty one). It throws APIError for an error status.
export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = getToken();
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error' };
  if (method !== 'GET') {
    // Every mutating call says application/json, with or without a body.
    headers['Content-Type'] = 'application/json';
    if (body !== undefined) init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new APIError(0, 'unreachable', 'the API is unreachable: ' + err.message);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `${resp.status} ${resp.statusText}`;
    throw new APIError(resp.status, data && typeof data.code === 'string' ? data.code : '', msg);
  }
  return data;
}

export const vdiskPath = (name) => '/api/v1/vdisks/' + encodeURIComponent(name);
