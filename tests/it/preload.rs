//! The background read of the model files at load (`pocketvl::loader::Preload`): without a
//! memory budget the language model's file is read in whole but the token embedding (read a
//! few rows at a time), and the mmproj whole; a held preload goes on once released;
//! `preload: false` (`--no-preload`) and the paging store under a budget read nothing ahead. The sizes come from the files and their
//! tensor tables, not from the loader.

use pocketvl::experts::ExpertOptions;
use pocketvl::loader::ModelFile;
use pocketvl::model::deepseek_vl2::vision::VisionModel;
use pocketvl::model::deepseek_vl2::LanguageModel;
use quant::gguf::GgufFile;

use crate::common;

fn len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn preload_reads_the_files_but_the_embedding_and_only_without_a_budget() {
    let (_dir, path) = common::converted("tiny-mha", "q8_0");
    let embd = GgufFile::open(&path)
        .unwrap()
        .tensor("token_embd.weight")
        .unwrap()
        .n_bytes;
    let file = ModelFile::open(&path).unwrap();
    let lm = LanguageModel::load_with(&file, &ExpertOptions::default()).unwrap();
    let mmproj = convert::write::mmproj_path(&path);
    let vision = VisionModel::load_with(&mmproj, true, None).unwrap();
    if cfg!(target_os = "linux") {
        let r = lm.preload().expect("a preload on Linux").wait();
        assert!(r.complete, "{r:?}");
        assert_eq!(r.bytes, len(&path) - embd);
        // A second wait reports the same.
        assert_eq!(lm.preload().unwrap().wait(), r);
        let v = vision.preload().expect("the mmproj's preload").wait();
        assert!(v.complete, "{v:?}");
        assert_eq!(v.bytes, len(&mmproj));
    }
    assert!(VisionModel::load(&mmproj).unwrap().preload().is_none());

    // A held preload goes on when its hold drops, or when the preload it was handed to ends.
    for handed in [false, true] {
        let lm = LanguageModel::load_with(&file, &ExpertOptions::default()).unwrap();
        let Some(p) = lm.preload() else { continue };
        if handed {
            // The mmproj's load holds it and hands the hold to its own preload.
            VisionModel::load_with(&mmproj, true, Some(p)).unwrap();
        } else {
            drop(p.hold());
        }
        let r = p.wait();
        assert!(r.complete, "{r:?}");
        assert_eq!(r.bytes, len(&path) - embd);
    }

    let off = ExpertOptions {
        preload: false,
        ..ExpertOptions::default()
    };
    assert!(LanguageModel::load_with(&file, &off)
        .unwrap()
        .preload()
        .is_none());
    let budget = ExpertOptions {
        budget: Some(1 << 40),
        ..ExpertOptions::default()
    };
    assert!(LanguageModel::load_with(&file, &budget)
        .unwrap()
        .preload()
        .is_none());
}
