//! A plain tar layer holding one regular file (after any folders), as modctl and `kit pack`
//! write a model file: recognising its layout from the layer's first bytes, so the file can
//! be downloaded on its own, and adopting that verified file into the tree once its head's
//! entries passed the same rules as any archive's.

use super::layer::Layer;
use super::Tree;
use crate::artifact::{Descriptor, Selection, Unpack};
use crate::cache::{FileLayout, VerifiedFile};
use crate::materialize::MaterializeError;
use std::io;

impl Tree {
    /// Places a one-file tar layer whose file was downloaded on its own (see
    /// [`one_file_layout`]): `head`'s entries (folders, then the file's header) go through the
    /// same checks as any archive's, and the file entry becomes `file`, renamed into place.
    /// Returns false when the selection leaves the file out (the caller deletes it).
    pub fn adopt_file(
        &mut self,
        head: &[u8],
        descriptor: &Descriptor,
        unpack: &Unpack,
        selection: &Selection,
        file: VerifiedFile,
    ) -> Result<bool, MaterializeError> {
        let budget = self.limits.layer_budget(descriptor.size);
        let mut layer = Layer::new(descriptor.digest.to_string(), unpack, selection, budget);
        layer.adopt = Some(file);
        let mut archive = tar::Archive::new(io::Cursor::new(head));
        let entries = archive
            .entries()
            .map_err(|e| self.read_error(&layer, e, "reading the archive"))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| self.read_error(&layer, e, "reading an entry header"))?;
            let regular = matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            );
            self.entry(&mut entry, &mut layer)?;
            if regular {
                // The file's bytes are not in the head: the file entry is the last one read.
                break;
            }
        }
        Ok(layer.adopt.is_none())
    }
}

/// Largest tar head (headers before a layer's one file) looked for.
pub const ONE_FILE_HEAD_PROBE: u64 = 64 << 10;

/// Whether a plain tar layer of `size` bytes that starts with `probe` holds just one regular
/// file (after any folders), as modctl and `kit pack` write a model file: then the file's
/// bytes are one contiguous range of the layer, followed by padding and end blocks only
/// (checked once they arrive). Returns the head (every byte before the file) and the file's
/// length.
pub fn one_file_layout(probe: &[u8], size: u64) -> Option<FileLayout> {
    let mut archive = tar::Archive::new(io::Cursor::new(probe));
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        match entry.header().entry_type() {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let start = entry.raw_file_position();
                let length = entry.size();
                let padding = length.next_multiple_of(512) - length;
                // Two end blocks at least, and no more than a record's worth of padding.
                let tail = size.checked_sub(start.checked_add(length)?)?;
                let fits = tail >= padding + 1024 && tail <= padding + 20 * 512 + 1024;
                return fits.then(|| FileLayout {
                    head: probe[..start as usize].to_vec(),
                    length,
                });
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries` (name, content; `None` content: a folder), GNU long names and all.
    fn tar_of(entries: &[(&str, Option<&[u8]>)], pax: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        for (name, content) in entries {
            let mut header = tar::Header::new_gnu();
            match content {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    builder.append_data(&mut header, name, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, name, io::empty()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_one_file_layer_is_found_past_folders_long_names_and_pax_headers() {
        let content = vec![7u8; 5000];
        let long = format!("shard/{}.safetensors", "x".repeat(120));
        for (layer, pax) in [
            (
                vec![("shard", None), (long.as_str(), Some(&content[..]))],
                vec![],
            ),
            (
                vec![("model.bin", Some(&content[..]))],
                vec![("comment", &b"packed by a test"[..])],
            ),
        ] {
            let bytes = tar_of(&layer, &pax);
            let found = one_file_layout(&bytes[..bytes.len().min(4096)], bytes.len() as u64)
                .expect("one file");
            assert_eq!(found.length, 5000);
            let start = found.head.len();
            assert_eq!(&bytes[start..start + 5000], &content[..]);
            assert_eq!(found.head, bytes[..start]);
        }
    }

    #[test]
    fn other_layers_are_not_taken_for_one_file() {
        let content = vec![1u8; 3000];
        // Two files whose second cannot hide in the padding, a link first, a short layer.
        let two = tar_of(
            &[
                ("a", Some(&content[..])),
                ("b", Some(&vec![2u8; 20_000][..])),
            ],
            &[],
        );
        assert!(one_file_layout(&two, two.len() as u64).is_none());
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "link", "a").unwrap();
        let link = builder.into_inner().unwrap();
        assert!(one_file_layout(&link, link.len() as u64).is_none());
        let one = tar_of(&[("a", Some(&content[..]))], &[]);
        assert!(one_file_layout(&one, one.len() as u64 - 1024).is_none());
    }
}
