"""Cinder volume driver for OVS.

Every Cinder volume is an OVS vdisk named after the volume (volume.name,
"volume-<uuid>"), every Cinder snapshot an OVS snapshot of that vdisk named
snapshot.name. The driver talks to the OVS REST API (/api/v1) and nothing
else; the data path is OVS's own: compute hosts attach a vdisk as the iSCSI
target iqn.2026-11.io.ovs:<vdisk> (LUN 0) that every OVS node serves, and
the volume node copies images to and from a vdisk over NBD with qemu-img.

Configure it in cinder.conf (see plugins/cinder/README.md):

    [ovs]
    volume_driver = ovs_cinder.driver.OVSDriver
    volume_backend_name = ovs
    ovs_api_url = http://10.0.0.1:8800
    ovs_api_token = <ovs token create>
"""

import math
import urllib.parse

from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder.common import constants
from cinder import exception
from cinder.i18n import _
from cinder.image import image_utils
from cinder import interface
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import volume_utils

from ovs_cinder import client as ovs_client

LOG = logging.getLogger(__name__)

IQN_PREFIX = 'iqn.2026-11.io.ovs:'
DEFAULT_ISCSI_PORT = 3260
DEFAULT_NBD_PORT = 10809
# Prefix of the snapshots create_cloned_volume takes of the source.
CLONE_SNAPSHOT_PREFIX = 'ovs-clone-'

ovs_opts = [
    cfg.StrOpt('ovs_api_url',
               default='http://127.0.0.1:8800',
               help='URL of the OVS REST API (any node of the cluster: '
                    'every node answers for every vdisk).'),
    cfg.StrOpt('ovs_api_token',
               secret=True,
               help='Bearer token for the OVS API (`ovs token create`). '
                    'Needed for changes when the API listens beyond '
                    'loopback.'),
    cfg.StrOpt('ovs_api_ca_file',
               help='CA bundle to verify an https OVS API with (default: '
                    'the system\'s).'),
    cfg.IntOpt('ovs_api_timeout',
               default=60, min=1,
               help='Seconds an ordinary OVS API call may take.'),
    cfg.IntOpt('ovs_api_long_timeout',
               default=600, min=1,
               help='Seconds the OVS API calls that wait for uploads or '
                    'copy data (rollback, clone, flatten, sync) may take.'),
    cfg.StrOpt('ovs_vpool',
               default='default',
               help='The OVS vpool this backend serves, reported to the '
                    'scheduler as the pool name (an OVS cluster serves one '
                    'vpool, "default").'),
    cfg.ListOpt('ovs_iscsi_portals',
                default=[],
                help='iSCSI portals (host:port) that compute hosts attach '
                     'through. Every OVS node serves every vdisk, so more '
                     'than one gives os-brick multipath. Default: the '
                     'host of ovs_api_url, port 3260.'),
    cfg.StrOpt('ovs_nbd_address',
               help='host:port of the OVS NBD server the volume node '
                    'copies images through (default: the host of '
                    'ovs_api_url, port 10809).'),
    cfg.BoolOpt('ovs_flatten_volume_from_snapshot',
                default=False,
                help='Copy a volume created from a snapshot loose from it '
                     'at once. Otherwise it shares the snapshot\'s data '
                     'until written, and the snapshot cannot be deleted '
                     'while such volumes exist.'),
    cfg.BoolOpt('ovs_flatten_cloned_volume',
                default=True,
                help='Copy a cloned volume loose from its source (and drop '
                     'the snapshot it was cloned from). Otherwise it shares '
                     'the source\'s data and the source cannot be deleted '
                     'while the clone exists.'),
]

CONF = cfg.CONF
CONF.register_opts(ovs_opts, group=configuration.SHARED_CONF_GROUP)


def _gib(nbytes):
    return round(float(nbytes) / units.Gi, 2)


@interface.volumedriver
class OVSDriver(driver.VolumeDriver):
    """Cinder volumes as OVS vdisks, attached over iSCSI.

    Version history:
        1.0.0 - create/delete/extend, snapshots, clones, revert, images,
                iSCSI connections with CHAP, manage/unmanage, stats
    """

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'OVS_CI'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(ovs_opts)
        self.client = None

    @staticmethod
    def get_driver_options():
        additional = driver.BaseVD._get_oslo_driver_opts(
            'reserved_percentage', 'max_over_subscription_ratio',
            'volume_backend_name', 'use_chap_auth', 'chap_username',
            'chap_password', 'volume_dd_blocksize')
        return ovs_opts + additional

    # -- setup

    def do_setup(self, context):
        conf = self.configuration
        verify = conf.ovs_api_ca_file or True
        self.client = ovs_client.OVSClient(
            conf.ovs_api_url, token=conf.ovs_api_token,
            timeout=conf.ovs_api_timeout,
            long_timeout=conf.ovs_api_long_timeout, verify=verify)

    def check_for_setup_error(self):
        try:
            self.client.health()
            self.client.list_vdisks()
        except ovs_client.OVSAPIError as e:
            raise exception.VolumeDriverException(
                message=_('OVS API at %(url)s is not usable: %(err)s')
                % {'url': self.client.base_url, 'err': e})

    # -- helpers

    @staticmethod
    def _vdisk(volume):
        """The vdisk of a volume: provider_location once set (a managed
        vdisk keeps its own name), else volume.name."""
        loc = getattr(volume, 'provider_location', None)
        if loc and loc.startswith('ovs:'):
            return loc[len('ovs:'):]
        return volume.name

    @staticmethod
    def _location(vdisk):
        return {'provider_location': 'ovs:' + vdisk}

    def _raise(self, err, volume=None, snapshot=None, action=''):
        """Raise the Cinder exception for an OVS API error."""
        msg = _('OVS %(action)s failed: %(err)s') % {'action': action,
                                                     'err': err}
        LOG.error(msg)
        if err.code == ovs_client.NOT_FOUND:
            if snapshot is not None:
                raise exception.SnapshotNotFound(snapshot_id=snapshot.id,
                                                 message=msg)
            if volume is not None:
                raise exception.VolumeNotFound(volume_id=volume.id,
                                               message=msg)
        if err.code == ovs_client.BUSY:
            if snapshot is not None:
                raise exception.SnapshotIsBusy(snapshot_name=snapshot.name,
                                               message=msg)
            if volume is not None:
                raise exception.VolumeIsBusy(volume_name=volume.name,
                                             message=msg)
        if err.code == ovs_client.INVALID_ARGUMENT:
            raise exception.InvalidInput(reason=msg)
        raise exception.VolumeBackendAPIException(data=msg)

    def _resize_to(self, vdisk, size_gb, volume):
        """Grow vdisk to size_gb GiB if it is smaller."""
        try:
            info = self.client.get_vdisk(vdisk)
            want = int(size_gb) * units.Gi
            if info['size'] < want:
                self.client.resize_vdisk(vdisk, want)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=volume, action='resize of %s' % vdisk)

    def _clone(self, volume, parent, snap_name, flatten, src=None,
               snapshot=None):
        """Clone vdisk parent at snapshot snap_name into volume."""
        name = volume.name
        try:
            self.client.clone(parent, snap_name, name)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=src, snapshot=snapshot,
                        action='clone of %s@%s to %s'
                        % (parent, snap_name, name))
        try:
            self._resize_to(name, volume.size, volume)
            if flatten:
                try:
                    self.client.flatten(name)
                except ovs_client.OVSAPIError as e:
                    self._raise(e, volume=volume,
                                action='flatten of %s' % name)
        except Exception:
            # A half-made volume would be an orphan vdisk.
            try:
                self.client.delete_vdisk(name, force=True)
            except ovs_client.OVSAPIError as e:
                LOG.warning('could not delete %s after a failed clone: %s',
                            name, e)
            raise
        return self._location(name)

    def _nbd_url(self, vdisk):
        addr = self.configuration.ovs_nbd_address
        if not addr:
            host = urllib.parse.urlsplit(self.client.base_url).hostname
            addr = '%s:%d' % (self._bracket(host), DEFAULT_NBD_PORT)
        return 'nbd://%s/%s' % (addr, vdisk)

    @staticmethod
    def _bracket(host):
        return '[%s]' % host if ':' in host else host

    def _portals(self):
        portals = [p.strip() for p in self.configuration.ovs_iscsi_portals
                   if p.strip()]
        if not portals:
            host = urllib.parse.urlsplit(self.client.base_url).hostname
            portals = ['%s:%d' % (self._bracket(host), DEFAULT_ISCSI_PORT)]
        return portals

    # -- volumes

    def create_volume(self, volume):
        name = volume.name
        try:
            self.client.create_vdisk(name, int(volume.size) * units.Gi)
        except ovs_client.OVSAPIError as e:
            self._raise(e, action='create of %s' % name)
        return self._location(name)

    def delete_volume(self, volume):
        vdisk = self._vdisk(volume)
        parent = None
        try:
            parent = (self.client.get_vdisk(vdisk) or {}).get('parent')
            self.client.delete_vdisk(vdisk)
        except ovs_client.OVSAPIError as e:
            if e.code == ovs_client.NOT_FOUND:
                LOG.info('vdisk %s is already gone', vdisk)
                return
            self._raise(e, volume=volume, action='delete of %s' % vdisk)
        # A clone that was not flattened leaves the snapshot it was made
        # from on its source: that one was the driver's, so drop it.
        if parent and '@' in parent:
            src, snap = parent.split('@', 1)
            if snap.startswith(CLONE_SNAPSHOT_PREFIX):
                try:
                    self.client.delete_snapshot(src, snap)
                except ovs_client.OVSAPIError as e:
                    LOG.warning('could not delete snapshot %s of %s: %s',
                                snap, src, e)

    def extend_volume(self, volume, new_size):
        vdisk = self._vdisk(volume)
        try:
            self.client.resize_vdisk(vdisk, int(new_size) * units.Gi)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=volume, action='extend of %s' % vdisk)

    def create_cloned_volume(self, volume, src_vref):
        src = self._vdisk(src_vref)
        snap = CLONE_SNAPSHOT_PREFIX + volume.id
        try:
            self.client.create_snapshot(src, snap,
                                        'clone source of ' + volume.name)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=src_vref, action='snapshot of %s' % src)
        flatten = self.configuration.ovs_flatten_cloned_volume
        try:
            update = self._clone(volume, src, snap, flatten, src=src_vref)
        except Exception:
            self._drop_snapshot(src, snap)
            raise
        if flatten:
            self._drop_snapshot(src, snap)
        return update

    def _drop_snapshot(self, vdisk, snap):
        try:
            self.client.delete_snapshot(vdisk, snap)
        except ovs_client.OVSAPIError as e:
            LOG.warning('could not delete snapshot %s of %s: %s',
                        snap, vdisk, e)

    # -- snapshots

    def create_snapshot(self, snapshot):
        vdisk = self._vdisk(snapshot.volume)
        try:
            self.client.create_snapshot(vdisk, snapshot.name,
                                        'cinder snapshot ' + snapshot.id)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=snapshot.volume,
                        action='snapshot of %s' % vdisk)

    def delete_snapshot(self, snapshot):
        vdisk = self._vdisk(snapshot.volume)
        try:
            self.client.delete_snapshot(vdisk, snapshot.name)
        except ovs_client.OVSAPIError as e:
            if e.code == ovs_client.NOT_FOUND:
                LOG.info('snapshot %s of %s is already gone',
                         snapshot.name, vdisk)
                return
            self._raise(e, snapshot=snapshot,
                        action='delete of snapshot %s of %s'
                        % (snapshot.name, vdisk))

    def create_volume_from_snapshot(self, volume, snapshot):
        parent = self._vdisk(snapshot.volume)
        return self._clone(
            volume, parent, snapshot.name,
            self.configuration.ovs_flatten_volume_from_snapshot,
            snapshot=snapshot)

    def snapshot_revert_use_temp_snapshot(self):
        # An OVS rollback only replays metadata and drops every later
        # snapshot, a temporary one included: nothing to gain.
        return False

    def revert_to_snapshot(self, context, volume, snapshot):
        vdisk = self._vdisk(volume)
        try:
            size = self.client.get_vdisk(vdisk)['size']
            # Cinder reverts detached volumes only; force covers a client
            # that has not let go of the vdisk yet.
            self.client.rollback(vdisk, snapshot.name, force=True)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=volume, snapshot=snapshot,
                        action='rollback of %s to %s' % (vdisk,
                                                         snapshot.name))
        # A revert keeps the volume's size (Cinder's contract); a rollback
        # to a snapshot taken before an extend gives the old size back.
        self._resize_to(vdisk, math.ceil(size / units.Gi), volume)

    # -- exports and connections

    def create_export(self, context, volume, connector):
        if not self.configuration.use_chap_auth:
            return None
        auth = volume.provider_auth
        if auth and len(auth.split()) == 3:
            _method, user, secret = auth.split()
        else:
            user = self.configuration.chap_username or (
                'cinder-' + volume.id[:8])
            secret = (self.configuration.chap_password
                      or volume_utils.generate_password(16))
        vdisk = self._vdisk(volume)
        try:
            self.client.set_chap(vdisk, user, secret)
        except ovs_client.OVSAPIError as e:
            self._raise(e, volume=volume, action='CHAP setup of %s' % vdisk)
        return {'provider_auth': 'CHAP %s %s' % (user, secret)}

    def ensure_export(self, context, volume):
        # OVS serves every vdisk as an iSCSI target on every node.
        pass

    def remove_export(self, context, volume):
        pass

    def initialize_connection(self, volume, connector, initiator_data=None):
        vdisk = self._vdisk(volume)
        iqn = IQN_PREFIX + vdisk
        portals = self._portals()
        data = {
            'target_discovered': False,
            'target_portal': portals[0],
            'target_iqn': iqn,
            'target_lun': 0,
            'volume_id': volume.id,
            'discard': True,
        }
        if len(portals) > 1:
            data['target_portals'] = portals
            data['target_iqns'] = [iqn] * len(portals)
            data['target_luns'] = [0] * len(portals)
        auth = volume.provider_auth
        if auth:
            method, user, secret = auth.split()
            data.update(auth_method=method, auth_username=user,
                        auth_password=secret)
        return {'driver_volume_type': 'iscsi', 'data': data}

    def terminate_connection(self, volume, connector, **kwargs):
        # Targets stay up: OVS exports every vdisk all the time.
        pass

    # -- images

    def copy_image_to_volume(self, context, volume, image_service, image_id):
        url = self._nbd_url(self._vdisk(volume))
        with image_utils.temporary_file(prefix='ovs-image-') as tmp:
            image_utils.fetch_to_raw(context, image_service, image_id, tmp,
                                     self.configuration.volume_dd_blocksize,
                                     size=volume.size, run_as_root=False)
            self._qemu_img_convert(tmp, url)

    def copy_volume_to_image(self, context, volume, image_service,
                             image_meta):
        url = self._nbd_url(self._vdisk(volume))
        with image_utils.temporary_file(prefix='ovs-upload-') as tmp:
            self._qemu_img_convert(url, tmp)
            volume_utils.upload_volume(context, image_service, image_meta,
                                       tmp, volume, run_as_root=False)

    @staticmethod
    def _qemu_img_convert(src, dst):
        # -n: the vdisk (or temporary file) exists; raw both ways, so
        # qemu-img never probes a format; -S 0 skips nothing (OVS reads
        # unwritten clusters as zeros anyway, and a temporary file stays
        # sparse through the default -S 4k).
        try:
            processutils.execute('qemu-img', 'convert', '-n', '-f', 'raw',
                                 '-O', 'raw', src, dst)
        except processutils.ProcessExecutionError as e:
            raise exception.VolumeBackendAPIException(
                data=_('qemu-img convert %(src)s to %(dst)s failed: '
                       '%(err)s') % {'src': src, 'dst': dst,
                                     'err': e.stderr or e})

    # -- stats

    def _update_volume_stats(self):
        conf = self.configuration
        backend_name = conf.safe_get('volume_backend_name') or 'ovs'
        try:
            cap = self.client.capacity()
        except ovs_client.OVSAPIError as e:
            LOG.warning('OVS capacity unavailable: %s', e)
            cap = None
        pool = {
            'pool_name': conf.ovs_vpool,
            'total_capacity_gb': 'unknown',
            'free_capacity_gb': 'unknown',
            'reserved_percentage': conf.safe_get('reserved_percentage') or 0,
            'max_over_subscription_ratio':
                conf.safe_get('max_over_subscription_ratio'),
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'QoS_support': False,
            'multiattach': False,
            'online_extend_support': True,
            'sparse_copy_volume': True,
            'location_info': 'OVSDriver:%s:%s' % (self.client.base_url,
                                                  conf.ovs_vpool),
        }
        if cap:
            pool.update(total_capacity_gb=_gib(cap['total_bytes']),
                        free_capacity_gb=_gib(cap['free_bytes']),
                        provisioned_capacity_gb=_gib(
                            cap['provisioned_bytes']),
                        total_volumes=cap['vdisks'],
                        ovs_backend=cap.get('backend'))
        self._stats = {
            'volume_backend_name': backend_name,
            'vendor_name': 'OVS',
            'driver_version': self.VERSION,
            'storage_protocol': constants.ISCSI,
            'pools': [pool],
        }

    def get_volume_stats(self, refresh=False):
        if refresh or not self._stats:
            self._update_volume_stats()
        return self._stats

    # -- manage / unmanage

    def _existing_vdisk(self, existing_ref):
        name = (existing_ref or {}).get('source-name')
        if not name:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('give the vdisk as source-name'))
        try:
            return self.client.get_vdisk(name)
        except ovs_client.OVSAPIError as e:
            if e.code == ovs_client.NOT_FOUND:
                raise exception.ManageExistingInvalidReference(
                    existing_ref=existing_ref,
                    reason=_('no OVS vdisk %s') % name)
            self._raise(e, action='lookup of %s' % name)

    def manage_existing_get_size(self, volume, existing_ref):
        info = self._existing_vdisk(existing_ref)
        return int(math.ceil(float(info['size']) / units.Gi))

    def manage_existing(self, volume, existing_ref):
        info = self._existing_vdisk(existing_ref)
        if info.get('template'):
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('vdisk %s is a read-only template') % info['name'])
        # Cinder sizes volumes in whole GiB: grow the vdisk to the size
        # manage_existing_get_size reported (growing keeps every byte).
        self._resize_to(info['name'],
                        math.ceil(float(info['size']) / units.Gi), volume)
        # The vdisk keeps its name; the volume points at it.
        return self._location(info['name'])

    def unmanage(self, volume):
        # The vdisk stays in OVS as it is; Cinder forgets it.
        pass

    def get_manageable_volumes(self, cinder_volumes, marker, limit, offset,
                               sort_keys, sort_dirs):
        try:
            vdisks = self.client.list_vdisks()
        except ovs_client.OVSAPIError as e:
            self._raise(e, action='vdisk list')
        managed = {self._vdisk(v): v.id for v in cinder_volumes}
        entries = []
        for vd in vdisks:
            cinder_id = managed.get(vd['name'])
            reason = None
            if cinder_id:
                reason = _('already managed')
            elif vd.get('template'):
                reason = _('a template')
            elif vd.get('clients'):
                reason = _('in use')
            entries.append({
                'reference': {'source-name': vd['name']},
                'size': int(math.ceil(float(vd['size']) / units.Gi)),
                'safe_to_manage': reason is None,
                'reason_not_safe': reason,
                'cinder_id': cinder_id,
                'extra_info': vd.get('parent'),
            })
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)
