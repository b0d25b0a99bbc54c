//! Image layers (overlay semantics): whiteouts. `.wh.NAME` hides what lower layers put at
//! NAME, `.wh..wh..opq` hides a folder's lower content; this layer's own entries stay.

use super::layer::{is_at_or_below, Layer, Place};
use super::{io_err, Tree};
use crate::materialize::MaterializeError;
use crate::safe_path::SafePath;
use std::fs;

pub(super) const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

impl Tree {
    /// Image whiteouts: `.wh.NAME` hides NAME, `.wh..wh..opq` hides a folder's lower content.
    pub(super) fn whiteout(
        &mut self,
        path: &SafePath,
        name: &str,
        layer: &mut Layer<'_>,
        raw: &str,
    ) -> Result<(), MaterializeError> {
        let parent = path.as_str().rsplit_once('/').map(|(p, _)| p);
        let join = |leaf: Option<&str>| -> Option<String> {
            match (parent, leaf) {
                (Some(p), Some(l)) => Some(format!("{p}/{l}")),
                (Some(p), None) => Some(p.to_string()),
                (None, Some(l)) => Some(l.to_string()),
                (None, None) => None,
            }
        };
        let (hidden, opaque) = if name == OPAQUE {
            (join(None), true)
        } else {
            (join(Some(&name[WHITEOUT.len()..])), false)
        };
        let hidden = match hidden {
            None => None,
            Some(h) => Some(SafePath::new(&h).map_err(|e| Self::refuse(layer, raw, e.reason))?),
        };
        // Which tree folder/path is hidden, after --subpath.
        let place = match &hidden {
            None => Place::Root,
            Some(h) => match self.place(h, layer.selection) {
                Place::Outside
                    if layer
                        .selection
                        .subpath()
                        .is_some_and(|sub| is_at_or_below(sub, h)) =>
                {
                    // The whiteout hides a folder holding the whole subpath.
                    return self.clear_dir(None, layer);
                }
                other => other,
            },
        };
        match (place, opaque) {
            (Place::Outside, _) => Ok(()),
            (Place::Root, _) => self.clear_dir(None, layer),
            (Place::At(p), true) => {
                if self.through_symlink(&p).is_some() {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        "the whiteout passes through a symlink",
                    ));
                }
                if fs::symlink_metadata(p.under(&self.root)).is_ok_and(|m| m.is_dir()) {
                    self.clear_dir(Some(&p), layer)?;
                }
                Ok(())
            }
            (Place::At(p), false) => {
                if layer.created.contains(p.as_str()) {
                    return Ok(());
                }
                if self.through_symlink(&p).is_some() {
                    return Err(Self::refuse(
                        layer,
                        raw,
                        "the whiteout passes through a symlink",
                    ));
                }
                self.remove(&p)
            }
        }
    }

    /// Removes what lower layers put in `dir` (the root when `None`), keeping this layer's.
    fn clear_dir(
        &mut self,
        dir: Option<&SafePath>,
        layer: &Layer<'_>,
    ) -> Result<(), MaterializeError> {
        let at = dir.map_or_else(|| self.root.to_path_buf(), |d| d.under(&self.root));
        let children: Vec<String> = fs::read_dir(&at)
            .map_err(io_err(&at))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&at))?;
        for child in children {
            let rel = match dir {
                Some(d) => format!("{d}/{child}"),
                None => child,
            };
            let rel = SafePath::new(&rel).expect("a child of a safe path is safe");
            if layer.created.contains(rel.as_str()) {
                if fs::symlink_metadata(rel.under(&self.root)).is_ok_and(|m| m.is_dir()) {
                    self.clear_dir(Some(&rel), layer)?;
                }
            } else {
                self.remove(&rel)?;
            }
        }
        Ok(())
    }
}
