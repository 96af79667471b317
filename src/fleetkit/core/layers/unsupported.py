"""Why a fluid 1.4 layer is not in ``fleetkit.layers``: asking for one says so.

``docs/porting-layers.md`` lists the same names with the same reasons
(``tests/unit/test_ops_layers_audit.py`` keeps the two equal)."""

_DATA_NORM = ("its statistics are accumulated by pslib's summary update (the op's 'gradients' are batch sums), "
              "which fleetkit's optimizers do not implement")
_DETECTION = ("object detection (boxes, anchors, NMS, region pooling): outside fleetkit's scope, which is "
              "distributed training of CTR, NLP and classification models")
_READERS = ("the pre-1.4 file-reader ops: feed with layers.py_reader / io.PyReader, DataFeeder or "
            "DatasetFactory instead (docs/porting.md)")
_FORWARD_ONLY = ("not built yet (While, Switch and IfElse train, but tensor arrays carry no gradient); stop a "
                 "While on a less_than condition, and write recurrences with DynamicRNN, StaticRNN, dynamic_lstm "
                 "or dynamic_gru")

#: layer name -> why fleetkit does not have it
REASONS: dict[str, str] = {
    "data_norm": _DATA_NORM,
    **dict.fromkeys(["open_files", "shuffle", "batch", "random_data_generator", "Preprocessor"], _READERS),
    **dict.fromkeys(["tensor_array_to_tensor", "is_empty"], _FORWARD_ONLY),
    **dict.fromkeys([
        "roi_pool", "roi_align", "psroi_pool", "prior_box", "density_prior_box", "multi_box_head",
        "bipartite_match", "target_assign", "detection_output", "ssd_loss", "detection_map", "rpn_target_assign",
        "anchor_generator", "roi_perspective_transform", "generate_proposal_labels", "generate_proposals",
        "generate_mask_labels", "iou_similarity", "box_coder", "polygon_box_transform", "yolov3_loss", "yolo_box",
        "box_clip", "multiclass_nms", "distribute_fpn_proposals", "box_decoder_and_assign", "collect_fpn_proposals",
    ], _DETECTION),
}
