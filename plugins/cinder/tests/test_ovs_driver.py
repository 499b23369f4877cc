"""Unit tests of the OVS Cinder driver, on Cinder's own test base, against
an in-memory OVS API over real HTTP (fake_ovs.FakeOVS).

Run with Debian's Python (python3-cinder): from plugins/cinder,
    /usr/bin/python3 -m pytest -q tests
"""

import inspect
from unittest import mock

from oslo_concurrency import processutils
from oslo_utils import units
from oslo_utils import uuidutils

from cinder.common import constants
from cinder import context
from cinder import exception
from cinder import interface
from cinder.interface import volume_driver as vd_iface
from cinder.interface import volume_manageable_driver as manage_iface
from cinder.interface import volume_snapshot_revert as revert_iface
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume
from cinder.tests.unit import test
from cinder.volume import configuration
from cinder.volume import driver as base_driver

from ovs_cinder import driver as ovs_driver
from tests import fake_ovs

GROUP = 'ovs-unit'
GiB = units.Gi


class OVSDriverTestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.ovs = fake_ovs.FakeOVS(token='t0ken')
        self.addCleanup(self.ovs.close)
        self.ctx = context.get_admin_context()
        self.driver = self.make_driver()

    def make_driver(self, **overrides):
        conf = configuration.Configuration(base_driver.volume_opts,
                                           config_group=GROUP)
        conf.append_config_values(ovs_driver.ovs_opts)
        opts = {'ovs_api_url': self.ovs.url, 'ovs_api_token': 't0ken',
                'volume_backend_name': 'ovs-b'}
        opts.update(overrides)
        for k, v in opts.items():
            self.override_config(k, v, group=GROUP)
        drv = ovs_driver.OVSDriver(configuration=conf)
        drv.do_setup(self.ctx)
        drv.check_for_setup_error()
        return drv

    def volume(self, size=1, **kw):
        kw.setdefault('id', uuidutils.generate_uuid())
        return fake_volume.fake_volume_obj(self.ctx, size=size, **kw)

    def snapshot(self, volume, **kw):
        kw.setdefault('id', uuidutils.generate_uuid())
        return fake_snapshot.fake_snapshot_obj(
            self.ctx, volume=volume, volume_id=volume.id,
            volume_size=volume.size, **kw)

    def test_create_delete(self):
        vol = self.volume(size=2)
        update = self.driver.create_volume(vol)
        self.assertEqual({'provider_location': 'ovs:' + vol.name}, update)
        self.assertEqual(2 * GiB, self.ovs.vdisks[vol.name]['size'])
        self.driver.delete_volume(vol)
        self.assertNotIn(vol.name, self.ovs.vdisks)
        # A vdisk that is gone already is a successful delete.
        self.driver.delete_volume(vol)

    def test_errors_carry_the_message(self):
        vol = self.volume()
        self.driver.create_volume(vol)
        e = self.assertRaises(exception.VolumeBackendAPIException,
                              self.driver.create_volume, vol)
        self.assertIn('already exists', str(e))
        self.assertIn('409', str(e))
        self.ovs.vdisks[vol.name]['clients'] = 1
        e = self.assertRaises(exception.VolumeIsBusy,
                              self.driver.delete_volume, vol)
        self.assertIn('is in use', str(e))
        e = self.assertRaises(exception.VolumeNotFound,
                              self.driver.extend_volume, self.volume(), 2)
        self.assertIn('not found', str(e))
        e = self.assertRaises(exception.InvalidInput,
                              self.driver.extend_volume, vol, 0)
        self.assertIn('cannot shrink', str(e))
        self.ovs.fail[('POST', '/api/v1/vdisks')] = (
            507, 'insufficient_storage', 'the write buffer is full')
        e = self.assertRaises(exception.VolumeBackendAPIException,
                              self.driver.create_volume, self.volume())
        self.assertIn('the write buffer is full', str(e))

    def test_token_and_unreachable(self):
        drv = self.make_driver(ovs_api_token='wrong')
        e = self.assertRaises(exception.VolumeBackendAPIException,
                              drv.create_volume, self.volume())
        self.assertIn('unauthorized', str(e))
        conf_url = 'http://127.0.0.1:1'
        drv.client.base_url = conf_url
        self.assertRaises(exception.VolumeDriverException,
                          drv.check_for_setup_error)

    def test_extend(self):
        vol = self.volume()
        self.driver.create_volume(vol)
        self.driver.extend_volume(vol, 3)
        self.assertEqual(3 * GiB, self.ovs.vdisks[vol.name]['size'])

    def test_snapshots_clone_and_revert(self):
        vol = self.volume(size=1)
        self.driver.create_volume(vol)
        snap = self.snapshot(vol)
        self.driver.create_snapshot(snap)
        self.assertEqual([snap.name], self.ovs.vdisks[vol.name]['snaps'])

        clone = self.volume(size=2)
        update = self.driver.create_volume_from_snapshot(clone, snap)
        self.assertEqual({'provider_location': 'ovs:' + clone.name}, update)
        info = self.ovs.vdisks[clone.name]
        self.assertEqual(vol.name + '@' + snap.name, info['parent'])
        self.assertEqual(2 * GiB, info['size'])  # grown past the snapshot

        # The snapshot has a dependent volume.
        self.assertRaises(exception.SnapshotIsBusy,
                          self.driver.delete_snapshot, snap)

        # Revert after an extend keeps the volume's size.
        self.driver.extend_volume(vol, 4)
        self.driver.revert_to_snapshot(self.ctx, vol, snap)
        rb = [r for r in self.ovs.requests if r[1].endswith('/rollback')]
        self.assertEqual({'snapshot': snap.name, 'force': True}, rb[-1][2])
        self.assertEqual(4 * GiB, self.ovs.vdisks[vol.name]['size'])
        self.assertFalse(self.driver.snapshot_revert_use_temp_snapshot())

        self.driver.delete_volume(clone)
        self.driver.delete_snapshot(snap)
        self.driver.delete_snapshot(snap)  # gone already: fine
        self.driver.delete_volume(vol)
        self.assertEqual({}, self.ovs.vdisks)

    def test_missing_snapshot(self):
        vol = self.volume()
        self.driver.create_volume(vol)
        snap = self.snapshot(vol)
        self.assertRaises(exception.SnapshotNotFound,
                          self.driver.create_volume_from_snapshot,
                          self.volume(), snap)
        self.assertRaises(exception.SnapshotNotFound,
                          self.driver.revert_to_snapshot, self.ctx, vol, snap)

    def test_cloned_volume_flattened(self):
        src = self.volume()
        self.driver.create_volume(src)
        clone = self.volume(size=2)
        self.driver.create_cloned_volume(clone, src)
        self.assertNotIn('parent', self.ovs.vdisks[clone.name])
        self.assertEqual([], self.ovs.vdisks[src.name]['snaps'])
        self.driver.delete_volume(src)  # independent of the clone

    def test_cloned_volume_linked(self):
        drv = self.make_driver(ovs_flatten_cloned_volume=False)
        src = self.volume()
        drv.create_volume(src)
        clone = self.volume()
        drv.create_cloned_volume(clone, src)
        snap = ovs_driver.CLONE_SNAPSHOT_PREFIX + clone.id
        self.assertEqual(src.name + '@' + snap,
                         self.ovs.vdisks[clone.name]['parent'])
        self.assertRaises(exception.VolumeIsBusy, drv.delete_volume, src)
        # Deleting the clone drops the driver's snapshot on the source.
        drv.delete_volume(clone)
        self.assertEqual([], self.ovs.vdisks[src.name]['snaps'])
        drv.delete_volume(src)

    def test_failed_clone_leaves_no_vdisk(self):
        src = self.volume()
        self.driver.create_volume(src)
        self.ovs.fail[('POST', '/api/v1/vdisks/[^/]+/flatten')] = (
            503, 'backend_unavailable', 'too few ASDs')
        clone = self.volume()
        e = self.assertRaises(exception.VolumeBackendAPIException,
                              self.driver.create_cloned_volume, clone, src)
        self.assertIn('too few ASDs', str(e))
        self.assertNotIn(clone.name, self.ovs.vdisks)
        self.assertEqual([], self.ovs.vdisks[src.name]['snaps'])

    def test_connection_iscsi(self):
        vol = self.volume()
        self.driver.create_volume(vol)
        conn = self.driver.initialize_connection(vol, {'initiator': 'iqn.x'})
        self.assertEqual('iscsi', conn['driver_volume_type'])
        data = conn['data']
        self.assertEqual('127.0.0.1:3260', data['target_portal'])
        self.assertEqual('iqn.2026-11.io.ovs:' + vol.name, data['target_iqn'])
        self.assertEqual(0, data['target_lun'])
        self.assertNotIn('auth_method', data)
        self.assertNotIn('target_portals', data)
        self.driver.terminate_connection(vol, {'initiator': 'iqn.x'})

    def test_connection_multipath_and_chap(self):
        drv = self.make_driver(
            use_chap_auth=True,
            ovs_iscsi_portals=['10.0.0.1:3260', '10.0.0.2:3260'])
        vol = self.volume()
        drv.create_volume(vol)
        update = drv.create_export(self.ctx, vol, {})
        method, user, secret = update['provider_auth'].split()
        self.assertEqual('CHAP', method)
        self.assertGreaterEqual(len(secret), 12)
        self.assertEqual({'user': user, 'secret': secret},
                         self.ovs.chap[vol.name])
        vol.provider_auth = update['provider_auth']
        # A second export keeps the credentials.
        self.assertEqual(update, drv.create_export(self.ctx, vol, {}))
        data = drv.initialize_connection(vol, {})['data']
        self.assertEqual(('CHAP', user, secret), (
            data['auth_method'], data['auth_username'],
            data['auth_password']))
        self.assertEqual(['10.0.0.1:3260', '10.0.0.2:3260'],
                         data['target_portals'])
        self.assertEqual([0, 0], data['target_luns'])

    def test_stats(self):
        self.driver.create_volume(self.volume(size=3))
        stats = self.driver.get_volume_stats(refresh=True)
        self.assertEqual('ovs-b', stats['volume_backend_name'])
        self.assertEqual(constants.ISCSI, stats['storage_protocol'])
        pool = stats['pools'][0]
        self.assertEqual('default', pool['pool_name'])
        self.assertEqual(400, pool['total_capacity_gb'])
        self.assertEqual(200, pool['free_capacity_gb'])
        self.assertEqual(3, pool['provisioned_capacity_gb'])
        self.assertEqual(1, pool['total_volumes'])
        self.assertTrue(pool['thin_provisioning_support'])
        # An API that cannot tell: 'unknown', never a made-up figure.
        self.ovs.fail[('GET', '/api/v1/capacity')] = (404, 'unknown_route',
                                                      'no')
        pool = self.driver.get_volume_stats(refresh=True)['pools'][0]
        self.assertEqual('unknown', pool['total_capacity_gb'])

    def test_manage_unmanage(self):
        self.ovs.add('legacy', GiB + 1)
        vol = self.volume(size=2)
        ref = {'source-name': 'legacy'}
        self.assertEqual(2, self.driver.manage_existing_get_size(vol, ref))
        update = self.driver.manage_existing(vol, ref)
        self.assertEqual({'provider_location': 'ovs:legacy'}, update)
        self.assertEqual(2 * GiB, self.ovs.vdisks['legacy']['size'])
        vol.provider_location = update['provider_location']
        # Operations reach the managed vdisk by its own name.
        self.driver.extend_volume(vol, 3)
        self.assertEqual(3 * GiB, self.ovs.vdisks['legacy']['size'])
        self.driver.unmanage(vol)
        self.assertIn('legacy', self.ovs.vdisks)
        self.assertRaises(exception.ManageExistingInvalidReference,
                          self.driver.manage_existing_get_size, vol,
                          {'source-name': 'nope'})
        self.assertRaises(exception.ManageExistingInvalidReference,
                          self.driver.manage_existing, vol, {})
        listed = self.driver.get_manageable_volumes([vol], None, 10, 0,
                                                    ['size'], ['asc'])
        self.assertEqual(1, len(listed))
        self.assertFalse(listed[0]['safe_to_manage'])
        self.assertEqual(vol.id, listed[0]['cinder_id'])

    def test_images_go_through_nbd(self):
        vol = self.volume()
        calls = []

        def fake_exec(*cmd, **kw):
            calls.append(cmd)
            return '', ''

        with mock.patch.object(processutils, 'execute', fake_exec), \
                mock.patch('cinder.image.image_utils.fetch_to_raw') as fetch, \
                mock.patch('cinder.volume.volume_utils.upload_volume') as up:
            self.driver.copy_image_to_volume(self.ctx, vol, 'svc', 'img-1')
            self.driver.copy_volume_to_image(self.ctx, vol, 'svc',
                                             {'id': 'img-2'})
        url = 'nbd://127.0.0.1:10809/' + vol.name
        tmp = fetch.call_args[0][3]
        self.assertEqual(('qemu-img', 'convert', '-n', '-f', 'raw', '-O',
                          'raw', tmp, url), calls[0])
        self.assertEqual(url, calls[1][-2])
        self.assertEqual(calls[1][-1], up.call_args[0][3])


class InterfaceTestCase(test.TestCase):
    """What Cinder's compliance tests check, for this driver."""

    def test_registered_and_compliant(self):
        self.assertIn(ovs_driver.OVSDriver, interface._volume_register)
        for iface in (vd_iface.VolumeDriverCore,
                      manage_iface.VolumeManagementDriver,
                      revert_iface.VolumeSnapshotRevertDriver):
            self.assertTrue(issubclass(ovs_driver.OVSDriver, iface),
                            '%s does not implement %s' % (
                                ovs_driver.OVSDriver, iface.__name__))

    # Methods of the interfaces that the driver leaves to Cinder's base
    # class, and why that is right: the base's answers make the manager
    # fall back to generic code that uses the driver's own methods.
    INHERITED = {
        # (None, False): the manager then calls copy_image_to_volume.
        'clone_image',
        # (False, None): the manager then migrates generically (create a
        # volume on the destination, copy, delete).
        'migrate_volume',
    }

    def test_interface_methods_are_ours(self):
        """Cinder's own check (issubclass on the interfaces) passes for any
        VolumeDriver subclass, since the base class defines every method,
        most as raise NotImplementedError. So check more: every method of
        the interfaces the volume manager calls, and every abstract method
        of the bases, is defined by OVSDriver itself (or deliberately
        inherited), is callable, and takes the base's arguments."""
        self.assertEqual(frozenset(),
                         ovs_driver.OVSDriver.__abstractmethods__)
        names = set()
        for iface in (vd_iface.VolumeDriverCore,
                      manage_iface.VolumeManagementDriver,
                      revert_iface.VolumeSnapshotRevertDriver):
            names |= {n for n, _ in inspect.getmembers(
                iface, inspect.isfunction) if not n.startswith('_')}
        for base in inspect.getmro(base_driver.VolumeDriver):
            names |= set(getattr(base, '__abstractmethods__', ()))
        self.assertGreater(len(names), 20)
        for name in sorted(names):
            if name in self.INHERITED:
                continue
            self.assertIn(name, ovs_driver.OVSDriver.__dict__,
                          'OVSDriver does not implement %s' % name)
            ours = getattr(ovs_driver.OVSDriver, name)
            self.assertTrue(callable(ours), name)
            base = getattr(base_driver.VolumeDriver, name, None)
            if base is None:
                continue
            want = [p for p in inspect.signature(base).parameters
                    if p not in ('args', 'kwargs')]
            got = list(inspect.signature(ours).parameters)
            self.assertEqual(want, got[:len(want)],
                             '%s takes other arguments than Cinder '
                             'passes' % name)

    def test_driver_options(self):
        names = {o.name for o in ovs_driver.OVSDriver.get_driver_options()}
        for n in ('ovs_api_url', 'ovs_api_token', 'ovs_vpool',
                  'ovs_api_timeout', 'use_chap_auth'):
            self.assertIn(n, names)
        token = [o for o in ovs_driver.ovs_opts if o.name == 'ovs_api_token']
        self.assertTrue(token[0].secret)
