//! A FUSE filesystem that loses what was not synced, for power-loss tests.
//!
//! File contents live in memory; a write reaches the backing directory only
//! when the file is fsynced (or fdatasynced). Namespace changes (create,
//! rename, unlink, mkdir) reach it at once, as on a journalling filesystem
//! that commits metadata in order. Unmounting without a sync is the power
//! cut: the backing directory then holds exactly what was made durable.
//! `sync_file_range` never reaches a FUSE filesystem, so it syncs nothing
//! here, as it promises nothing across a power loss.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// No caching in the kernel: every lookup and attribute comes from here.
const TTL: Duration = Duration::ZERO;

/// What a file holds in memory, and which of it the backing file lacks.
#[derive(Default)]
struct Contents {
    data: Vec<u8>,
    /// Byte ranges written since the last sync.
    unsynced: Vec<(u64, u64)>,
}

#[derive(Default)]
struct State {
    /// Paths relative to the backing directory, by inode; the root is "".
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Files read or written since the mount.
    files: HashMap<PathBuf, Contents>,
    /// Bytes written to the backing directory by syncs.
    synced_bytes: u64,
}

struct PowerFs {
    backing: PathBuf,
    state: Arc<Mutex<State>>,
}

/// A mounted [`PowerFs`]; dropping it cuts the power.
pub struct PowerLossMount {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
}

impl PowerLossMount {
    /// Mounts a filesystem at `mountpoint` whose durable state is kept in
    /// `backing`. Needs root and /dev/fuse; the error says which is missing.
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(backing)?;
        fs::create_dir_all(mountpoint)?;
        let state = Arc::new(Mutex::new(State {
            next_inode: 2,
            ..State::default()
        }));
        {
            let mut state = state.lock().unwrap();
            state.paths.insert(INodeNo::ROOT.0, PathBuf::new());
            state.inodes.insert(PathBuf::new(), INodeNo::ROOT.0);
        }
        let fs = PowerFs {
            backing: backing.to_path_buf(),
            state: state.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("ballast-power-loss".into())];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Self {
            session: Some(session),
            state,
        })
    }

    /// Bytes that syncs wrote through to the backing directory.
    pub fn synced_bytes(&self) -> u64 {
        self.state.lock().unwrap().synced_bytes
    }

    /// Unmounts without writing anything more: every write not synced is lost.
    pub fn cut_power(mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

impl Drop for PowerLossMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

fn errno(error: std::io::Error) -> Errno {
    Errno::from(error)
}

impl PowerFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn path_of(state: &State, inode: INodeNo) -> Result<PathBuf, Errno> {
        state.paths.get(&inode.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(state: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(Self::path_of(state, parent)?.join(name))
    }

    fn inode_for(state: &mut State, path: &Path) -> u64 {
        if let Some(inode) = state.inodes.get(path) {
            return *inode;
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.paths.insert(inode, path.to_path_buf());
        state.inodes.insert(path.to_path_buf(), inode);
        inode
    }

    fn forget_path(state: &mut State, path: &Path) {
        if let Some(inode) = state.inodes.remove(path) {
            state.paths.remove(&inode);
        }
        state.files.remove(path);
    }

    /// The file's contents, read from the backing file the first time.
    fn contents<'a>(&self, state: &'a mut State, path: &Path) -> Result<&'a mut Contents, Errno> {
        if !state.files.contains_key(path) {
            let data = fs::read(self.backing.join(path)).map_err(errno)?;
            state.files.insert(
                path.to_path_buf(),
                Contents {
                    data,
                    unsynced: Vec::new(),
                },
            );
        }
        Ok(state.files.get_mut(path).expect("just inserted"))
    }

    fn attr(&self, state: &mut State, path: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.backing.join(path)).map_err(errno)?;
        let kind = if meta.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        let size = match state.files.get(path) {
            Some(contents) => contents.data.len() as u64,
            None => meta.len(),
        };
        let inode = Self::inode_for(state, path);
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(FileAttr {
            ino: INodeNo(inode),
            size,
            blocks: size.div_ceil(512),
            atime: modified,
            mtime: modified,
            ctime: modified,
            crtime: modified,
            kind,
            perm: (meta.permissions().mode() & 0o7777) as u16,
            nlink: if meta.is_dir() { 2 } else { 1 },
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Creates `name` in `parent` in the backing directory with `create`
    /// (a namespace change, durable at once), empty, with `mode`.
    fn make(
        &self,
        state: &mut State,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        create: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<FileAttr, Errno> {
        let path = Self::child(state, parent, name)?;
        let full = self.backing.join(&path);
        create(&full).map_err(errno)?;
        fs::set_permissions(&full, fs::Permissions::from_mode(mode)).map_err(errno)?;
        // Whatever an earlier file of that name held in memory is gone.
        state.files.remove(&path);
        self.attr(state, &path)
    }

    /// Removes `name` from `parent` in the backing directory with `remove`
    /// (a namespace change, durable at once) and forgets it.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = Self::child(&state, parent, name).and_then(|path| {
            remove(&self.backing.join(&path)).map_err(errno)?;
            Self::forget_path(&mut state, &path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Writes the file's unsynced ranges and length to the backing file.
    fn sync(&self, state: &mut State, path: &Path) -> Result<(), Errno> {
        let Some(contents) = state.files.get_mut(path) else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .write(true)
            .open(self.backing.join(path))
            .map_err(errno)?;
        let mut written = 0;
        for (start, end) in std::mem::take(&mut contents.unsynced) {
            let end = end.min(contents.data.len() as u64);
            if start < end {
                file.write_all_at(&contents.data[start as usize..end as usize], start)
                    .map_err(errno)?;
                written += end - start;
            }
        }
        file.set_len(contents.data.len() as u64).map_err(errno)?;
        state.synced_bytes += written;
        Ok(())
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result =
            Self::child(&state, parent, name).and_then(|path| self.attr(&mut state, &path));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = self.state();
        match Self::path_of(&state, ino).and_then(|path| self.attr(&mut state, &path)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = Self::path_of(&state, ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(self.backing.join(&path), fs::Permissions::from_mode(mode))
                    .map_err(errno)?;
            }
            if let Some(size) = size {
                // A new length is data: durable at the next sync.
                let contents = self.contents(&mut state, &path)?;
                let old = contents.data.len() as u64;
                contents.data.resize(size as usize, 0);
                if size > old {
                    contents.unsynced.push((old, size));
                }
            }
            self.attr(&mut state, &path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let result = self.make(&mut state, parent, name, mode, |full| fs::create_dir(full));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |full| fs::remove_file(full), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |full| fs::remove_dir(full), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            let from = Self::child(&state, parent, name)?;
            let to = Self::child(&state, newparent, newname)?;
            fs::rename(self.backing.join(&from), self.backing.join(&to)).map_err(errno)?;
            Self::forget_path(&mut state, &to);
            // Unsynced contents move with the name; the backing file
            // under the new name holds what was synced.
            if let Some(contents) = state.files.remove(&from) {
                state.files.insert(to.clone(), contents);
            }
            // Paths below a renamed directory move too.
            let moved: Vec<(u64, PathBuf)> = state
                .paths
                .iter()
                .filter(|(_, path)| path.starts_with(&from))
                .map(|(inode, path)| (*inode, to.join(path.strip_prefix(&from).unwrap())))
                .collect();
            for (inode, new_path) in moved {
                let old = state.paths.insert(inode, new_path.clone()).unwrap();
                state.inodes.remove(&old);
                state.inodes.insert(new_path, inode);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let state = self.state();
        match Self::path_of(&state, ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        let result = Self::path_of(&state, ino).and_then(|path| {
            let contents = self.contents(&mut state, &path)?;
            let start = (offset as usize).min(contents.data.len());
            let end = (start + size as usize).min(contents.data.len());
            Ok(contents.data[start..end].to_vec())
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = Self::path_of(&state, ino).and_then(|path| {
            let contents = self.contents(&mut state, &path)?;
            let end = offset as usize + data.len();
            if contents.data.len() < end {
                contents.data.resize(end, 0);
            }
            contents.data[offset as usize..end].copy_from_slice(data);
            contents.unsynced.push((offset, end as u64));
            Ok(data.len() as u32)
        });
        match result {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() promises nothing about durability.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        match Self::path_of(&state, ino).and_then(|path| self.sync(&mut state, &path)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = Self::path_of(&state, ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for entry in fs::read_dir(self.backing.join(&path)).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let kind = if entry.file_type().map_err(errno)?.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                let inode = Self::inode_for(&mut state, &path.join(entry.file_name()));
                entries.push((inode, kind, entry.file_name()));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (inode, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(inode), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable at once here.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = self.make(&mut state, parent, name, mode, |full| {
            File::create(full).map(drop)
        });
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}
