"""An in-memory stand-in for the OVS REST API, served over real HTTP on
127.0.0.1, for the driver's unit tests.

It follows framework/api (server.go, errors.go): the routes the driver
calls, JSON bodies, 201/204 answers, and errors as
{"error": "<message>", "code": "<code>"} with the same statuses. It also
insists on what the real guard does: Content-Type application/json on
mutating calls, and the bearer token when one is set.
"""

import json
import re
import urllib.parse

import eventlet
from eventlet import wsgi


class FakeOVS(object):
    def __init__(self, token=None):
        self.token = token
        self.vdisks = {}  # name -> dict (VolumeInfo) + 'snaps': [names]
        self.chap = {}
        self.requests = []  # (method, path, body)
        self.capacity = {'backend': 'ec', 'raw_total_bytes': 600 << 30,
                         'raw_free_bytes': 300 << 30, 'efficiency': 4 / 6}
        self.fail = {}  # (method, path regexp) -> (status, code, message)
        # Cinder's test base runs on eventlet: the fake is a WSGI app in a
        # green thread of the same hub, so the driver's (green) HTTP calls
        # and the server take turns instead of blocking each other.
        sock = eventlet.listen(('127.0.0.1', 0))
        self.url = 'http://127.0.0.1:%d' % sock.getsockname()[1]
        self.thread = eventlet.spawn(wsgi.server, sock, self.app,
                                     log=_NullLog(), log_output=False)

    def close(self):
        self.thread.kill()

    # -- helpers

    def add(self, name, size, **kw):
        info = {'name': name, 'id': 'id-' + name, 'size': size,
                'clients': 0, 'template': False, 'snapshots': 0,
                'state': 'ok', 'snaps': []}
        info.update(kw)
        self.vdisks[name] = info
        return info

    def _public(self, info):
        out = dict(info)
        out.pop('snaps')
        out['snapshots'] = len(info['snaps'])
        return out

    def _children(self, name, snap=None):
        for v in self.vdisks.values():
            p = v.get('parent') or ''
            if p == name + '@' + snap if snap else p.startswith(name + '@'):
                yield v

    # -- HTTP

    def app(self, environ, start_response):
        n = int(environ.get('CONTENT_LENGTH') or 0)
        raw = environ['wsgi.input'].read(n) if n else b''
        method, path = environ['REQUEST_METHOD'], environ['PATH_INFO']
        query = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))
        body = json.loads(raw) if raw else None
        self.requests.append((method, path, body))
        out = []

        def reply(status, obj=None):
            data = b'' if obj is None else json.dumps(obj).encode()
            headers = [('Content-Length', str(len(data)))]
            if obj is not None:
                headers.append(('Content-Type', 'application/json'))
            start_response('%d X' % status, headers)
            out.append(data)

        def error(status, code, msg):
            reply(status, {'error': msg, 'code': code})

        for (m, pattern), err in self.fail.items():
            if m == method and re.fullmatch(pattern, path):
                error(*err)
                return out
        if method != 'GET':
            if environ.get('CONTENT_TYPE') != 'application/json':
                error(415, 'unsupported_media_type',
                      'mutating calls must be application/json')
                return out
            if self.token and (environ.get('HTTP_AUTHORIZATION')
                               != 'Bearer ' + self.token):
                error(401, 'unauthorized', 'a valid token is needed')
                return out
        self.route(method, path, query, body, reply, error)
        return out

    def route(self, method, path, query, body, reply, error):
        parts = [urllib.parse.unquote(p) for p in path.split('/')[3:]]
        vd = self.vdisks.get(parts[1]) if len(parts) > 1 else None

        def missing():
            return error(404, 'not_found', 'vdisk "%s" not found' % parts[1])

        if parts == ['health']:
            return reply(200, {'status': 'ok'})
        if parts == ['capacity']:
            c = dict(self.capacity)
            c['total_bytes'] = int(c['raw_total_bytes'] * c['efficiency'])
            c['free_bytes'] = int(c['raw_free_bytes'] * c['efficiency'])
            c['provisioned_bytes'] = sum(v['size']
                                         for v in self.vdisks.values())
            c['vdisks'] = len(self.vdisks)
            return reply(200, c)
        if parts == ['vdisks'] and method == 'GET':
            return reply(200, [self._public(self.vdisks[k])
                               for k in sorted(self.vdisks)])
        if parts == ['vdisks'] and method == 'POST':
            if body['name'] in self.vdisks:
                return error(409, 'already_exists',
                             'vdisk "%s" already exists' % body['name'])
            return reply(201, self._public(self.add(body['name'],
                                                    body['size'])))
        if len(parts) < 2 or parts[0] != 'vdisks':
            return error(404, 'unknown_route', 'no such API endpoint')
        if vd is None:
            return missing()
        name = parts[1]
        rest = parts[2:]
        if not rest and method == 'GET':
            return reply(200, self._public(vd))
        if not rest and method == 'DELETE':
            if vd['clients'] and query.get('force') != ['true']:
                return error(409, 'busy', 'vdisk "%s" is in use' % name)
            if list(self._children(name)):
                return error(409, 'busy', 'vdisk "%s" has clones' % name)
            del self.vdisks[name]
            return reply(204)
        if rest == ['resize']:
            if body['size'] < vd['size']:
                return error(400, 'invalid_argument',
                             'vdisk "%s": cannot shrink' % name)
            vd['size'] = body['size']
            return reply(200, self._public(vd))
        if rest == ['snapshots'] and method == 'POST':
            if body['name'] in vd['snaps']:
                return error(409, 'already_exists', 'snapshot exists')
            vd['snaps'].append(body['name'])
            vd.setdefault('snap_sizes', {})[body['name']] = vd['size']
            return reply(201, {'name': body['name'], 'synced': False})
        if rest == ['snapshots'] and method == 'GET':
            return reply(200, [{'name': s} for s in vd['snaps']])
        if len(rest) == 2 and rest[0] == 'snapshots' and method == 'DELETE':
            if rest[1] not in vd['snaps']:
                return error(404, 'not_found', 'snapshot "%s" of vdisk '
                             '"%s" not found' % (rest[1], name))
            if list(self._children(name, rest[1])):
                return error(409, 'busy', 'snapshot "%s" of vdisk "%s" is '
                             'in use: clones depend on it' % (rest[1], name))
            vd['snaps'].remove(rest[1])
            return reply(204)
        if rest == ['rollback']:
            snap = body['snapshot']
            if snap not in vd['snaps']:
                return error(404, 'not_found', 'snapshot not found')
            if vd['clients'] and not body.get('force'):
                return error(409, 'busy', 'vdisk "%s" is in use' % name)
            del vd['snaps'][vd['snaps'].index(snap) + 1:]
            vd['size'] = vd['snap_sizes'][snap]
            return reply(200, self._public(vd))
        if rest == ['clones']:
            if body['snapshot'] not in vd['snaps']:
                return error(404, 'not_found', 'snapshot "%s" of vdisk "%s" '
                             'not found' % (body['snapshot'], name))
            if body['name'] in self.vdisks:
                return error(409, 'already_exists', 'exists')
            info = self.add(body['name'], vd['snap_sizes'][body['snapshot']],
                            parent=name + '@' + body['snapshot'])
            return reply(201, self._public(info))
        if rest == ['flatten']:
            vd.pop('parent', None)
            return reply(200, self._public(vd))
        if rest == ['iscsi-chap'] and method == 'PUT':
            self.chap[name] = body
            return reply(204)
        return error(404, 'unknown_route', 'no such API endpoint')


class _NullLog(object):
    def write(self, *args):
        pass

    def info(self, *args, **kw):
        pass

    debug = error = warning = info
