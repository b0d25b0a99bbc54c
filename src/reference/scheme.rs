//! URI schemes written in front of a reference. `oci://` is how KServe, Argo and others spell
//! an OCI artifact; `tugboat://` is the prefix tugboat's KServe `ClusterStorageContainer`
//! registers (KServe sends `oci://` to its own Modelcar handling, see README); `kit://` is the
//! prefix of KitOps' KServe storage container, so its `storageUri`s keep working when that
//! image is swapped for tugboat. Each only says "this is an OCI reference": the scheme is
//! dropped. Every other scheme is refused with what to use instead.

/// Schemes that mean "an OCI reference follows".
pub const ACCEPTED: [&str; 3] = ["oci", "tugboat", "kit"];

/// What follows an accepted scheme, the input itself when it has none, or why the scheme is
/// refused (advice naming what to use instead).
pub fn strip(input: &str) -> Result<&str, Refusal> {
    let Some((scheme, rest)) = input.split_once("://") else {
        return Ok(input);
    };
    if ACCEPTED.contains(&scheme) {
        return Ok(rest);
    }
    Err(Refusal {
        scheme: scheme.to_string(),
        advice: advice(scheme),
    })
}

/// A scheme tugboat does not fetch from, with what to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub scheme: String,
    pub advice: String,
}

fn advice(scheme: &str) -> String {
    let lower = scheme.to_ascii_lowercase();
    match lower.as_str() {
        "hf" | "huggingface" => {
            "a Hugging Face Hub model is not an OCI artifact: let KServe's own \
             storage initializer fetch hf:// URIs (its default ClusterStorageContainer does), or \
             put the model in your registry first (`kit import hf-org/model` then `kit push`, or \
             `modctl build` then `modctl push`) and pull oci://REGISTRY/REPOSITORY:TAG"
                .to_string()
        }
        "s3" | "gs" | "gcs" | "azure" | "hdfs" | "webhdfs" | "modelscope" => format!(
            "{lower}:// is object or file storage, which KServe's own storage initializer reads; \
             tugboat pulls from OCI registries only: push the model to one (`oras push`, \
             `kit push`, `modctl push`) and pull oci://REGISTRY/REPOSITORY:TAG"
        ),
        "http" | "https" => "write a registry reference without http(s)://, as \
             host[:port]/repository[:tag][@sha256:digest] (or oci://host/...); for a registry \
             without TLS add --plain-http or --insecure-registry HOST"
            .to_string(),
        "pvc" => "a pvc:// model is already on a volume: KServe mounts that claim itself, there \
             is nothing to pull"
            .to_string(),
        "file" => "a local path is not a registry reference; `tugboat push DIR REF` puts a \
             directory into a registry"
            .to_string(),
        "docker" => "write the reference without docker:// (host/repository:tag), or as \
             oci://host/repository:tag"
            .to_string(),
        _ if lower.starts_with("oci+") => format!(
            "{lower}:// selects one of KServe's own OCI modes (KServe handles it without a \
             storage container); for tugboat write tugboat://REGISTRY/REPOSITORY:TAG in KServe, \
             oci://... elsewhere"
        ),
        _ => "tugboat reads OCI references: registry[:port]/repository[:tag][@sha256:digest], \
             optionally written oci://..., tugboat://... or kit://..."
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_schemes_are_dropped() {
        assert_eq!(strip("oci://h.example/m:v1"), Ok("h.example/m:v1"));
        assert_eq!(strip("tugboat://h.example/m:v1"), Ok("h.example/m:v1"));
        assert_eq!(strip("kit://h.example/m:v1"), Ok("h.example/m:v1"));
        assert_eq!(strip("h.example/m:v1"), Ok("h.example/m:v1"));
    }

    #[test]
    fn other_schemes_say_what_to_use_instead() {
        let refused = |s: &str| strip(s).unwrap_err();
        assert!(refused("hf://org/model").advice.contains("kit import"));
        assert!(refused("s3://bucket/key").advice.contains("oras push"));
        assert!(refused("https://h/r").advice.contains("--plain-http"));
        assert!(refused("oci+native://h/r:v1").advice.contains("tugboat://"));
        assert!(refused("pvc://claim/path")
            .advice
            .contains("nothing to pull"));
        assert_eq!(refused("OCI://h/r").scheme, "OCI");
    }
}
