"""A small client for the OVS REST API (/api/v1), as the Cinder driver
uses it.

Every non-2xx answer of the API is a JSON object
``{"error": "<message>", "code": "<code>"}`` (framework/api/errors.go);
it comes back here as an :class:`OVSAPIError` with the status, the code
and the message, and the driver turns that into a Cinder exception.
"""

import json
import urllib.parse

import requests

# Codes of framework/api/errors.go that the driver tells apart.
NOT_FOUND = 'not_found'
ALREADY_EXISTS = 'already_exists'
INVALID_ARGUMENT = 'invalid_argument'
BUSY = 'busy'
READ_ONLY = 'read_only'
UNAUTHORIZED = 'unauthorized'


class OVSAPIError(Exception):
    """An error answer of the OVS API, or a failure to reach it."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self):
        if self.status:
            return '%s (HTTP %s, %s)' % (self.message, self.status,
                                         self.code or 'no code')
        return self.message


def _quote(name):
    return urllib.parse.quote(name, safe='')


class OVSClient(object):
    """Calls the OVS REST API at base_url (e.g. http://10.0.0.1:8800).

    token is the bearer token mutating calls need when the API listens
    beyond loopback (``ovs token create``). timeout bounds ordinary calls,
    long_timeout the ones that wait for uploads or copy data (sync,
    rollback, clone, flatten), as the server's own deadlines do.
    """

    def __init__(self, base_url, token=None, timeout=60, long_timeout=600,
                 verify=True, session=None):
        base = base_url.strip().rstrip('/')
        if '://' not in base:
            base = 'http://' + base
        if base.endswith('/api/v1'):
            base = base[:-len('/api/v1')]
        self.base_url = base
        self.token = token or None
        self.timeout = timeout
        self.long_timeout = long_timeout
        self.verify = verify
        self.session = session or requests.Session()

    # -- plumbing

    def _request(self, method, path, body=None, params=None, long=False):
        url = self.base_url + '/api/v1' + path
        # The API takes only application/json for mutating calls, with or
        # without a body.
        headers = {'Accept': 'application/json',
                   'Content-Type': 'application/json'}
        if self.token:
            headers['Authorization'] = 'Bearer ' + self.token
        data = None if body is None else json.dumps(body)
        try:
            resp = self.session.request(
                method, url, data=data, params=params, headers=headers,
                timeout=self.long_timeout if long else self.timeout,
                verify=self.verify)
        except requests.RequestException as e:
            raise OVSAPIError(None, 'unreachable',
                              'cannot reach the OVS API at %s: %s'
                              % (self.base_url, e))
        if 200 <= resp.status_code < 300:
            if resp.status_code == 204 or not resp.content:
                return None
            try:
                return resp.json()
            except ValueError:
                raise OVSAPIError(resp.status_code, 'bad_response',
                                  'the OVS API answered %s %s with '
                                  'something that is not JSON'
                                  % (method, path))
        raise self._error(resp)

    @staticmethod
    def _error(resp):
        code, message = None, None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            err = body.get('error')
            if isinstance(err, dict):  # {"error": {"code", "message"}}
                code, message = err.get('code'), err.get('message')
            else:  # {"error": "...", "code": "..."}, what OVS sends
                code, message = body.get('code'), err
        if not message:
            text = (resp.text or '').strip()[:200]
            message = 'HTTP %d %s%s' % (resp.status_code, resp.reason or '',
                                        (': ' + text) if text else '')
        return OVSAPIError(resp.status_code, code, message)

    # -- the calls

    def health(self):
        return self._request('GET', '/health')

    def capacity(self):
        return self._request('GET', '/capacity')

    def list_vdisks(self):
        return self._request('GET', '/vdisks') or []

    def get_vdisk(self, name):
        return self._request('GET', '/vdisks/' + _quote(name))

    def create_vdisk(self, name, size):
        return self._request('POST', '/vdisks',
                             {'name': name, 'size': int(size)})

    def delete_vdisk(self, name, force=False):
        params = {'force': 'true'} if force else None
        return self._request('DELETE', '/vdisks/' + _quote(name),
                             params=params)

    def resize_vdisk(self, name, size):
        return self._request('POST', '/vdisks/%s/resize' % _quote(name),
                             {'size': int(size)})

    def sync_vdisk(self, name):
        return self._request('POST', '/vdisks/%s/sync' % _quote(name),
                             long=True)

    def create_snapshot(self, vdisk, snapshot, metadata=None):
        body = {'name': snapshot}
        if metadata:
            body['metadata'] = metadata
        return self._request('POST', '/vdisks/%s/snapshots' % _quote(vdisk),
                             body)

    def list_snapshots(self, vdisk):
        return self._request(
            'GET', '/vdisks/%s/snapshots' % _quote(vdisk)) or []

    def delete_snapshot(self, vdisk, snapshot):
        return self._request('DELETE', '/vdisks/%s/snapshots/%s'
                             % (_quote(vdisk), _quote(snapshot)))

    def rollback(self, vdisk, snapshot, force=False):
        body = {'snapshot': snapshot}
        if force:
            body['force'] = True
        return self._request('POST', '/vdisks/%s/rollback' % _quote(vdisk),
                             body, long=True)

    def clone(self, parent, snapshot, name):
        return self._request('POST', '/vdisks/%s/clones' % _quote(parent),
                             {'name': name, 'snapshot': snapshot}, long=True)

    def flatten(self, name):
        return self._request('POST', '/vdisks/%s/flatten' % _quote(name),
                             long=True)

    def set_chap(self, name, user, secret):
        return self._request('PUT', '/vdisks/%s/iscsi-chap' % _quote(name),
                             {'user': user, 'secret': secret})
