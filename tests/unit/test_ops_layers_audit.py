"""docs/porting-layers.md against fleetkit.layers: every layer it lists as supported is a
callable in fleetkit.layers, every name of fluid's layer list is listed once, and every
unsupported name comes with a reason."""
import re
from pathlib import Path

import fleetkit.layers as L

DOC = Path(__file__).resolve().parents[2] / "docs" / "porting-layers.md"
#: every name under paddle.fluid.layers in PaddlePaddle's paddle/fluid/API.spec (1.4, plus 1.5's few additions)
FLUID_LAYERS = """
    fc embedding dynamic_lstm dynamic_lstmp dynamic_gru gru_unit linear_chain_crf crf_decoding cos_sim
    cross_entropy bpr_loss square_error_cost chunk_eval sequence_conv conv2d conv3d sequence_pool
    sequence_softmax softmax pool2d pool3d adaptive_pool2d adaptive_pool3d batch_norm data_norm
    beam_search_decode conv2d_transpose conv3d_transpose sequence_expand sequence_expand_as sequence_pad
    sequence_unpad lstm_unit reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_all reduce_any
    sequence_first_step sequence_last_step sequence_slice dropout split ctc_greedy_decoder edit_distance
    l2_normalize matmul topk warpctc sequence_reshape transpose im2sequence nce
    sampled_softmax_with_cross_entropy hsigmoid beam_search row_conv multiplex layer_norm group_norm
    spectral_norm softmax_with_cross_entropy smooth_l1 one_hot autoincreased_step_counter reshape squeeze
    unsqueeze lod_reset lrn pad pad_constant_like label_smooth roi_pool roi_align dice_loss image_resize
    image_resize_short resize_bilinear resize_nearest gather scatter sequence_scatter random_crop mean_iou
    relu selu log crop rank_loss margin_rank_loss elu relu6 pow stanh hard_sigmoid swish prelu brelu
    leaky_relu soft_relu flatten sequence_mask stack pad2d unstack sequence_enumerate expand sequence_concat
    scale elementwise_add elementwise_div elementwise_sub elementwise_mul elementwise_max elementwise_min
    elementwise_pow elementwise_mod elementwise_floordiv uniform_random_batch_size_like gaussian_random
    sampling_id gaussian_random_batch_size_like sum slice shape rank logical_and logical_or logical_xor
    logical_not clip clip_by_norm mean mul sigmoid_cross_entropy_with_logits maxout space_to_depth
    affine_grid sequence_reverse affine_channel similarity_focus hash grid_sampler log_loss
    add_position_encoding bilinear_tensor_product merge_selected_rows get_tensor_from_selected_rows lstm
    shuffle_channel temporal_shift py_func psroi_pool teacher_student_sigmoid_loss huber_loss kldiv_loss
    tree_conv npair_loss pixel_shuffle fsp_matrix continuous_value_model where sign data open_files
    read_file shuffle batch double_buffer random_data_generator py_reader create_py_reader_by_data
    Preprocessor load create_tensor create_parameter create_global_var cast tensor_array_to_tensor concat
    sums assign fill_constant_batch_size_like fill_constant argmin argmax argsort ones zeros reverse has_inf
    has_nan isfinite range linspace zeros_like diag While Switch increment array_write create_array
    less_than less_equal greater_than greater_equal equal not_equal array_read array_length IfElse
    DynamicRNN StaticRNN reorder_lod_tensor_by_rank Print is_empty sigmoid logsigmoid exp tanh atan
    tanh_shrink softshrink sqrt rsqrt abs ceil floor cos acos asin sin round reciprocal square softplus
    softsign uniform_random hard_shrink cumsum thresholded_relu prior_box density_prior_box multi_box_head
    bipartite_match target_assign detection_output ssd_loss detection_map rpn_target_assign anchor_generator
    roi_perspective_transform generate_proposal_labels generate_proposals generate_mask_labels
    iou_similarity box_coder polygon_box_transform yolov3_loss yolo_box box_clip multiclass_nms
    distribute_fpn_proposals box_decoder_and_assign collect_fpn_proposals accuracy auc exponential_decay
    natural_exp_decay inverse_time_decay polynomial_decay piecewise_decay noam_decay cosine_decay
    linear_lr_warmup
""".split()


def _blocks():
    text = DOC.read_text()
    sup = re.search(r"## Supported \((\d+)\)\n\n```\n(.*?)```", text, re.S)
    uns = re.search(r"## Not supported \((\d+)\), and why\n\n```\n(.*?)```", text, re.S)
    assert sup and uns, "docs/porting-layers.md lost its two lists"
    supported = sup.group(2).split()
    reasons = dict(line.split(": ", 1) for line in uns.group(2).strip().splitlines())
    assert int(sup.group(1)) == len(supported) and int(uns.group(1)) == len(reasons)
    return supported, reasons


def test_supported_layers_exist_and_are_callable():
    supported, _ = _blocks()
    missing = [n for n in supported if not callable(getattr(L, n, None))]
    assert not missing, f"listed as supported but not in fleetkit.layers: {missing}"


def test_every_fluid_layer_is_listed_once_with_a_reason_when_unsupported():
    supported, reasons = _blocks()
    listed = supported + list(reasons)
    assert sorted(listed) == sorted(FLUID_LAYERS), (
        f"unlisted: {sorted(set(FLUID_LAYERS) - set(listed))}; not fluid names or listed twice: "
        f"{sorted(n for n in set(listed) if listed.count(n) > 1 or n not in FLUID_LAYERS)}")
    assert all(r.strip() for r in reasons.values())


def test_unsupported_list_is_up_to_date():
    """A layer added to fleetkit.layers moves to the supported list."""
    _, reasons = _blocks()
    now_there = [n for n in reasons if callable(getattr(L, n, None))]
    assert not now_there, f"now in fleetkit.layers, move them to the supported list: {now_there}"
